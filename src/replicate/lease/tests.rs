use super::*;

const JOB: &str = "67f81ad5-0c6f-5355-a878-63246a3f83f9";

fn record(run: &str, expires: i64, released: bool) -> LeaseRecord {
    LeaseRecord {
        run: run.into(),
        holder: format!("pid 1 on {run}"),
        site: format!("site-of-{run}"),
        expires,
        released,
    }
}

fn map(entries: &[(String, String)]) -> StringMap {
    entries.iter().cloned().collect()
}

#[test]
fn only_canonical_generations_of_this_job_count() {
    assert_eq!(generation_of(&key(JOB, 7), JOB), Some(7));
    assert_eq!(generation_of(&key(JOB, 0), JOB), Some(0));
    for other in [
        format!("{KEY_PREFIX}{JOB}:007"),
        format!("{KEY_PREFIX}{JOB}:+7"),
        format!("{KEY_PREFIX}{JOB}:"),
        format!("{KEY_PREFIX}{JOB}:7x"),
        format!("{KEY_PREFIX}{JOB}:99999999999999999999"),
        format!("{KEY_PREFIX}{JOB}"),
        format!("{KEY_PREFIX}{JOB}x:7"),
        format!("{KEY_PREFIX}other:7"),
        "xo:backup:job".to_owned(),
    ] {
        assert_eq!(generation_of(&other, JOB), None, "{other}");
    }
}

#[test]
fn a_record_round_trips_and_its_value_is_bounded() {
    for r in [record("a", 1_800_000_000, false), record("b", 0, true)] {
        let value = r.to_value();
        assert!(value.len() < MAX_VALUE_BYTES, "{value}");
        assert_eq!(LeaseRecord::parse(&value), Ok(r));
    }
    let held = record("a", 1_800_000_000, false).to_value();
    assert!(!held.contains("released"), "{held}");
    assert!(held.contains("2027-01-15T08:00:00Z"), "{held}");
}

#[test]
fn hostile_values_are_refused_or_made_fit_to_show() {
    let long = format!(
        r#"{{"run":"r","holder":"{}","expires":"2027-01-15T08:00:00Z"}}"#,
        "x".repeat(MAX_VALUE_BYTES)
    );
    assert!(LeaseRecord::parse(&long).unwrap_err().contains("bytes"));
    for bad in [
        "",
        "held",
        "{}",
        r#"{"run":"","holder":"h","expires":"2027-01-15T08:00:00Z"}"#,
        r#"{"run":"r\u001b","holder":"h","expires":"2027-01-15T08:00:00Z"}"#,
        r#"{"run":"r","holder":"h","expires":"tomorrow"}"#,
        r#"{"run":"r","holder":"h","expires":1800000000}"#,
    ] {
        assert!(LeaseRecord::parse(bad).is_err(), "{bad}");
    }
    let shouty = format!(
        r#"{{"run":"r","holder":"\u001b[2J{}","expires":"2027-01-15T08:00:00Z"}}"#,
        "y".repeat(300)
    );
    let parsed = LeaseRecord::parse(&shouty).unwrap();
    assert!(
        !parsed.holder.chars().any(char::is_control),
        "{:?}",
        parsed.holder
    );
    assert_eq!(parsed.holder.chars().count(), MAX_HOLDER_CHARS + 1);
    // Fields a newer vhdsync may add are ignored.
    let newer = r#"{"run":"r","holder":"h","expires":"2027-01-15T08:00:00Z","node":"n"}"#;
    assert_eq!(LeaseRecord::parse(newer).unwrap().run, "r");
}

#[test]
fn the_newest_generation_decides_and_older_ones_are_tidied() {
    let none = read(&map(&[("xo:backup:job".into(), JOB.into())]), JOB);
    assert_eq!(none.state, LeaseState::None);
    assert_eq!(decide(&none, "elsewhere", 100), Decision::Take(1));

    let held = record("a", 200, false);
    let snapshot = read(
        &map(&[
            (key(JOB, 9), held.to_value()),
            (key(JOB, 10), held.to_value()),
            (key(JOB, 8), "junk".into()),
            (key("other-job", 50), "junk".into()),
        ]),
        JOB,
    );
    assert_eq!(snapshot.generation, 10);
    assert_eq!(snapshot.older, [key(JOB, 8), key(JOB, 9)]);
    assert_eq!(
        decide(&snapshot, "elsewhere", 199),
        Decision::HeldBy(held.clone())
    );
    // Expired at its expiry, on the host's clock.
    assert_eq!(decide(&snapshot, "elsewhere", 200), Decision::Take(11));

    let released = read(
        &map(&[(key(JOB, 3), record("a", 900, true).to_value())]),
        JOB,
    );
    assert_eq!(decide(&released, "elsewhere", 100), Decision::Take(4));
}

#[test]
fn a_lease_of_the_deciders_own_site_is_a_dead_runs_and_taken_at_once() {
    let held = record("a", 200, false);
    let snapshot = read(&map(&[(key(JOB, 4), held.to_value())]), JOB);
    assert_eq!(decide(&snapshot, "site-of-a", 100), Decision::Take(5));
    assert_eq!(decide(&snapshot, "site-of-b", 100), Decision::HeldBy(held));
    // A lease that names no site is never taken that way, not even by a site-less run.
    let siteless = LeaseRecord {
        site: String::new(),
        ..record("a", 200, false)
    };
    let snapshot = read(&map(&[(key(JOB, 4), siteless.to_value())]), JOB);
    assert!(!siteless.to_value().contains("site"));
    assert_eq!(decide(&snapshot, "", 100), Decision::HeldBy(siteless));
    // A hostile site is no lease.
    let forged = record("a", 200, false)
        .to_value()
        .replace("site-of-a", "site\\u001b[2J");
    assert!(LeaseRecord::parse(&forged).is_err(), "{forged}");
}

#[test]
fn a_newest_key_that_is_not_a_lease_is_refused_not_taken() {
    let snapshot = read(
        &map(&[
            (key(JOB, 1), record("a", 0, true).to_value()),
            (key(JOB, 2), "mine now".into()),
        ]),
        JOB,
    );
    assert!(matches!(
        decide(&snapshot, "elsewhere", i64::MAX),
        Decision::Refuse(_)
    ));
    let at_limit = read(
        &map(&[(key(JOB, u64::MAX), record("a", 0, true).to_value())]),
        JOB,
    );
    assert_eq!(
        decide(&at_limit, "elsewhere", 0),
        Decision::Refuse("its generation is at its limit".into())
    );
}

#[test]
fn the_holder_names_this_process_and_its_state_dir() {
    let me = Holder::this_process(std::path::Path::new("/var/lib/vhdsync"));
    assert!(
        me.holder
            .starts_with(&format!("pid {}", std::process::id())),
        "{}",
        me.holder
    );
    assert!(
        me.holder.ends_with("state dir /var/lib/vhdsync"),
        "{}",
        me.holder
    );
    let again = Holder::this_process(std::path::Path::new("/"));
    assert_ne!(me.run, again.run);
    // The site is the machine and the directory itself, not the run.
    assert_eq!(
        Holder::this_process(std::path::Path::new("/")).site,
        again.site
    );
    assert!(!again.site.is_empty());
    assert_ne!(
        again.site,
        Holder::this_process(std::path::Path::new("/proc")).site
    );
}

#[test]
fn a_holder_without_a_state_dir_has_no_site_and_takes_over_no_live_lease() {
    let me = Holder::this_process_without_state_dir();
    assert!(me.site.is_empty(), "{}", me.site);
    assert!(me.holder.ends_with(", no state dir"), "{}", me.holder);
    // A lease of another run, not yet expired, is held even from an empty site: an empty
    // site matches nothing, its own kind included.
    for their_site in ["", "backup-7f9c 2049:131"] {
        let theirs = LeaseRecord {
            site: their_site.into(),
            ..record("theirs", 100, false)
        };
        let snapshot = read(&map(&[(key(JOB, 3), theirs.to_value())]), JOB);
        assert_eq!(
            decide(&snapshot, &me.site, 50),
            Decision::HeldBy(theirs.clone()),
            "site {their_site:?}"
        );
    }
}
