//! Local file-system primitives shared by every floor-2 and floor-3 writer (the lab host's
//! state, the SR, TLS material, VHD images, seed files) and the readers of files a user
//! hands over: one kind of I/O, no policy.

pub mod atomic;
pub mod regular;
