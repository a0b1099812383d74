//! VHD files on disk.
