//! Guest filesystems: what a sim guest's files live in.
//!
//! [`ext4`] is the read-write ext4 over a [`crate::block::BlockDevice`]
//! (so over a machine's COW file); the VFS that mounts it for the shell and
//! applets builds on it (issue #11).

pub mod ext4;
