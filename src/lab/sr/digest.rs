//! The digest of a VDI's whole guest content: SHA-256 over every byte of the virtual size,
//! fed one block at a time so memory stays bounded whatever the disk size.

use sha2::{Digest, Sha256};

use crate::image::{BlockData, Chain};

/// Zeros shared by every unallocated block, fed in pieces instead of allocating a block.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Lowercase hex SHA-256 of the chain's guest view, `virtual_size` bytes long.
pub(super) fn content_sha256(chain: &Chain) -> String {
    let mut hasher = Sha256::new();
    for index in 0..chain.block_count() {
        match chain.block_data(index) {
            BlockData::Data(bytes) => hasher.update(&bytes),
            BlockData::Zero => {
                let mut left = chain.leaf().block_len(index) as usize;
                while left > 0 {
                    let n = left.min(ZEROS.len());
                    hasher.update(&ZEROS[..n]);
                    left -= n;
                }
            }
        }
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{CreateOptions, VhdWriter, create};

    #[test]
    fn digest_covers_the_whole_virtual_size_including_a_short_last_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vhd");
        let size = 3 * 1024 * 1024 + 512;
        create(&path, &CreateOptions::dynamic(size)).unwrap();
        let mut writer = VhdWriter::open(&path).unwrap();
        writer.write_sectors(4096, &[7u8; 1024]).unwrap();
        writer.write_sectors(size - 512, &[9u8; 512]).unwrap();
        writer.flush().unwrap();

        let mut expected = vec![0u8; size as usize];
        expected[4096..5120].fill(7);
        expected[size as usize - 512..].fill(9);
        let chain = Chain::open(&path).unwrap();
        assert_eq!(
            content_sha256(&chain),
            hex::encode(Sha256::digest(&expected))
        );
    }
}
