# vhdsync under Nomad: one periodic batch job per VM of a replication job, each running one
# `vhdsync replicate --vm UUID` a night in the image built from contrib/Containerfile.
#
# prohibit_overlap keeps two runs of this job from overlapping; the lease on the source VM
# (see "Running a fleet" in the README) keeps apart any two runs for the same VM, from any
# node or job. A run that finds the lease held exits 3 and names the holder; a run killed
# with its node leaves a lease that expires after lease_ttl (10 minutes by default). So the
# state directory may be the task's own, lost with it.
#
# The passwords come from the Nomad variable nomad/jobs/vhdsync-web01 (keys source_pw and
# target_pw), written as files readable by the image's user (65532) only (template uid and
# gid need Nomad 1.4 or later).
#   nomad var put nomad/jobs/vhdsync-web01 source_pw=… target_pw=…
#   nomad job run vhdsync-web01.nomad.hcl
job "vhdsync-web01" {
  type = "batch"

  periodic {
    crons            = ["30 1 * * *"]
    prohibit_overlap = true
  }

  group "replicate" {
    # A failed run is not retried at once: the next night's run cleans up and continues.
    restart {
      attempts = 0
      mode     = "fail"
    }
    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "vhdsync" {
      driver = "docker"
      # SIGTERM stops the cycle, which removes what it created and releases the lease.
      kill_timeout = "120s"

      config {
        image = "registry.example/vhdsync:latest"
        args = [
          "replicate",
          "--job", "${NOMAD_TASK_DIR}/nightly.toml",
          "--vm", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        ]
      }

      template {
        destination = "secrets/source.pw"
        perms       = "600"
        uid         = 65532 # the image's user
        gid         = 65532
        data        = "{{ with nomadVar \"nomad/jobs/vhdsync-web01\" }}{{ .source_pw }}{{ end }}"
      }
      template {
        destination = "secrets/target.pw"
        perms       = "600"
        uid         = 65532 # the image's user
        gid         = 65532
        data        = "{{ with nomadVar \"nomad/jobs/vhdsync-web01\" }}{{ .target_pw }}{{ end }}"
      }
      template {
        destination = "local/nightly.toml"
        data        = <<-TOML
          name = "nightly"
          source = "https://root@10.0.0.1"
          target = "https://root@10.0.0.2"
          source_password_file = "{{ env "NOMAD_SECRETS_DIR" }}/source.pw"
          target_password_file = "{{ env "NOMAD_SECRETS_DIR" }}/target.pw"
          target_sr = "6f3b8a2e-1c4d-4e5f-9a0b-1c2d3e4f5a6b"
          vms = ["0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"]
          retention = 3
          state_dir = "{{ env "NOMAD_TASK_DIR" }}/state"

          [tls]
          source_fingerprint = "sha256:0011223344556677889900112233445566778899001122334455667788990011"
          target_fingerprint = "sha256:1122334455667788990011223344556677889900112233445566778899001122"
          TOML
      }
    }
  }
}
