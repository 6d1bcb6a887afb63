//! An epoll set plus an eventfd that wakes whoever waits on it: the wait loop under
//! both forwarding engines (the switch and the ipvlan emulation).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::check;

pub struct Poller {
    epoll: OwnedFd,
    wake: OwnedFd,
}

impl Poller {
    /// A new epoll set whose eventfd is registered under `wake_token`.
    pub fn new(wake_token: u64) -> io::Result<Poller> {
        // SAFETY: epoll_create1/eventfd return fresh descriptors owned right away.
        let epoll =
            unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        // SAFETY: as above.
        let wake = unsafe {
            OwnedFd::from_raw_fd(check(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let poller = Poller { epoll, wake };
        poller.add(poller.wake.as_raw_fd(), wake_token, libc::EPOLLIN as u32)?;
        Ok(poller)
    }

    /// Watch `fd` for `events`, reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: registering a descriptor with an event struct on the stack.
        check(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        })?;
        Ok(())
    }

    /// Change what `fd` is watched for (re-arming a one-shot descriptor). A descriptor
    /// no longer in the set (a removed port) makes this a no-op.
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: modifying our epoll set with an event struct on the stack.
        unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut event);
        }
    }

    /// Stop watching `fd`; one already gone is fine.
    pub fn remove(&self, fd: RawFd) {
        // SAFETY: removing a descriptor from our epoll set.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Wake the waiters (the eventfd becomes readable until `clear_wake`).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local to our eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                size_of::<u64>(),
            );
        }
    }

    /// Empty the eventfd (EAGAIN when it already is).
    pub fn clear_wake(&self) {
        let mut counter = 0u64;
        // SAFETY: reading the 8-byte eventfd counter into a local.
        unsafe {
            libc::read(
                self.wake.as_raw_fd(),
                (&mut counter as *mut u64).cast(),
                size_of::<u64>(),
            );
        }
    }

    /// Wait up to `timeout_ms` for ready descriptors; returns how many of `events` are filled.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let capacity = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the kernel writes at most `capacity` entries into `events`.
        let ready = check(unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                capacity,
                timeout_ms,
            )
        })?;
        Ok(ready as usize)
    }
}
