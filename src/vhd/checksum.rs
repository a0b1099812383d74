/// The VHD checksum: the one's complement of the byte sum of `bytes`, with the four bytes of
/// the checksum field itself (at `checksum_at`) counted as zero.
pub fn ones_complement_checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_ignores_its_own_field() {
        let mut bytes = [1u8; 16];
        let plain = ones_complement_checksum(&bytes, 4);
        bytes[4..8].copy_from_slice(&[0xAA; 4]);
        assert_eq!(ones_complement_checksum(&bytes, 4), plain);
        assert_eq!(plain, !12u32);
    }
}
