//! An epoll set plus an eventfd that wakes whoever waits on it: the wait loop under
//! both forwarding engines (the switch and the ipvlan emulation), and [`SpinPolicy`],
//! which polls a little before sleeping when packets come back and forth.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

    /// Change the events `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: changing a registered descriptor with an event struct on the stack.
        check(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut event)
        })?;
        Ok(())
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

/// Polling before sleeping, for request/response traffic. Waking a thread that sleeps in
/// `epoll_wait` costs ~5 µs when it shares the waker's CPU and ~10 µs on the other, idle
/// CPU of a KVM guest (an IPI plus a VM exit: the idle vCPU halted), against ~2 µs for a
/// thread that is polling (`benches/tools/wakeup.c`). A ping across two keelnet hosts
/// takes three such handoffs per round trip.
///
/// The window adapts like KVM's halt polling: it grows (doubling, up to `max`) while the
/// thread's sleeps turn out no longer than `max`, and shrinks when idle gaps are longer,
/// so bulk or sparse traffic does not poll. Between polls the thread yields: tasks woken
/// on its CPU run at once. A long gap between two polls means another task wanted the
/// CPU (it ran a time slice); then polling stops and backs off (10 ms, doubling up to
/// 1 s), since a runnable poller is not woken early by a packet the way a sleeper is: it
/// waits out the other task's slice (~4 ms here). For the same reason polling starts
/// only while the runnable tasks (`/proc/loadavg`), not counting other polling workers
/// of this process (they stop when another task needs their CPU), leave a CPU idle.
#[derive(Debug)]
pub struct SpinPolicy {
    max: Duration,
    window: Duration,
    /// No polling before this (after contention for the CPU).
    resume: Instant,
    backoff: Duration,
    cpus: usize,
    loadavg: Option<File>,
    /// The last [`SpinPolicy::cpus_busy`] answer and when it was read: reading costs
    /// ~2 µs, which would add to every handoff.
    busy: (bool, Instant),
}

impl SpinPolicy {
    /// The first window once sleeps turn out short.
    const START: Duration = Duration::from_micros(10);
    /// A gap this long between two polls: the CPU went to a task that wanted it.
    const CONTENDED: Duration = Duration::from_micros(200);
    const FIRST_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    /// How often the count of runnable tasks is read.
    const LOAD_CHECK: Duration = Duration::from_millis(2);

    /// Polls for at most `max` before sleeping; zero: always sleep at once.
    pub fn new(max: Duration) -> SpinPolicy {
        SpinPolicy {
            max,
            window: Duration::ZERO,
            resume: Instant::now(),
            backoff: Self::FIRST_BACKOFF,
            cpus: std::thread::available_parallelism().map_or(1, |cpus| cpus.get()),
            loadavg: if max.is_zero() {
                None
            } else {
                File::open("/proc/loadavg").ok()
            },
            // Read at the first poll.
            busy: (
                false,
                Instant::now()
                    .checked_sub(Self::LOAD_CHECK)
                    .unwrap_or_else(Instant::now),
            ),
        }
    }

    /// Whether another task could run if this thread kept its CPU: more runnable tasks
    /// (this one included, other polling workers not) than CPUs. Unknown: assume not.
    fn cpus_busy(&mut self, now: Instant) -> bool {
        let (busy, checked) = self.busy;
        if now - checked < Self::LOAD_CHECK {
            return busy;
        }
        let busy = self.read_cpus_busy();
        self.busy = (busy, now);
        busy
    }

    fn read_cpus_busy(&self) -> bool {
        let Some(file) = &self.loadavg else {
            return false;
        };
        let mut text = [0u8; 128];
        let Ok(length) = file.read_at(&mut text, 0) else {
            return false;
        };
        let polling_others = POLLING.load(Ordering::Relaxed);
        runnable_tasks(&text[..length])
            .is_some_and(|runnable| runnable.saturating_sub(polling_others) > self.cpus)
    }

    /// How long the next wait polls before sleeping.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// An idle gap ended by an event after `gap` (polling included).
    fn woke_after(&mut self, gap: Duration) {
        if gap <= self.max {
            self.window = (self.window * 2).clamp(Self::START.min(self.max), self.max);
        } else {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        self.window /= 2;
        if self.window < Self::START {
            self.window = Duration::ZERO;
        }
    }

    fn polled_and_found(&mut self) {
        self.backoff = Self::FIRST_BACKOFF;
    }

    fn contended(&mut self, now: Instant) {
        self.window = Duration::ZERO;
        self.resume = now + self.backoff;
        self.backoff = (self.backoff * 2).min(Self::MAX_BACKOFF);
    }
}

impl Poller {
    /// Polls until something is ready (returns how many), the window ends or another
    /// task takes the CPU (0).
    fn poll_for(
        &self,
        events: &mut [libc::epoll_event],
        spin: &mut SpinPolicy,
        idle_since: Instant,
    ) -> io::Result<usize> {
        let mut last_poll = idle_since;
        loop {
            let ready = self.wait(events, 0)?;
            if ready > 0 {
                spin.polled_and_found();
                return Ok(ready);
            }
            let now = Instant::now();
            // Off the CPU between two polls: another task wanted it.
            if now - last_poll > SpinPolicy::CONTENDED {
                spin.contended(now);
                return Ok(0);
            }
            if now - idle_since >= spin.window {
                return Ok(0);
            }
            last_poll = now;
            // SAFETY: sched_yield has no arguments and cannot fail on Linux.
            unsafe { libc::sched_yield() };
        }
    }

    /// [`Poller::wait`], polling first for as long as `spin` says (see [`SpinPolicy`]).
    pub fn wait_spinning(
        &self,
        events: &mut [libc::epoll_event],
        timeout_ms: i32,
        spin: &mut SpinPolicy,
    ) -> io::Result<usize> {
        let idle_since = Instant::now();
        if !spin.window.is_zero() && idle_since >= spin.resume && !spin.cpus_busy(idle_since) {
            POLLING.fetch_add(1, Ordering::Relaxed);
            let polled = self.poll_for(events, spin, idle_since);
            POLLING.fetch_sub(1, Ordering::Relaxed);
            match polled? {
                0 => {}
                ready => return Ok(ready),
            }
        }
        let ready = self.wait(events, timeout_ms)?;
        if ready > 0 {
            spin.woke_after(idle_since.elapsed());
        } else {
            spin.shrink();
        }
        Ok(ready)
    }
}

/// Workers of this process polling right now (several switches may share a machine).
static POLLING: AtomicUsize = AtomicUsize::new(0);

/// The runnable-task count of `/proc/loadavg` ("0.52 0.58 0.59 3/219 12345": 3).
fn runnable_tasks(loadavg: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(loadavg).ok()?;
    let field = text.split_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnable_tasks_come_from_the_fourth_field() {
        assert_eq!(runnable_tasks(b"0.52 0.58 0.59 3/219 12345\n"), Some(3));
        assert_eq!(runnable_tasks(b"garbage"), None);
    }

    #[test]
    fn the_window_grows_with_short_sleeps_and_shrinks_with_long_ones() {
        let max = Duration::from_micros(100);
        let mut spin = SpinPolicy::new(max);
        assert_eq!(spin.window(), Duration::ZERO);
        for _ in 0..10 {
            spin.woke_after(Duration::from_micros(30));
        }
        assert_eq!(spin.window(), max);
        spin.woke_after(Duration::from_millis(5));
        assert_eq!(spin.window(), max / 2);
        for _ in 0..4 {
            spin.woke_after(Duration::from_millis(5));
        }
        assert_eq!(spin.window(), Duration::ZERO);
    }

    #[test]
    fn contention_stops_polling_for_a_growing_while() {
        let mut spin = SpinPolicy::new(Duration::from_micros(100));
        spin.woke_after(Duration::from_micros(30));
        let now = Instant::now();
        spin.contended(now);
        assert_eq!(spin.window(), Duration::ZERO);
        assert_eq!(spin.resume, now + SpinPolicy::FIRST_BACKOFF);
        spin.contended(now);
        assert_eq!(spin.resume, now + 2 * SpinPolicy::FIRST_BACKOFF);
        spin.polled_and_found();
        assert_eq!(spin.backoff, SpinPolicy::FIRST_BACKOFF);
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut spin = SpinPolicy::new(Duration::ZERO);
        spin.woke_after(Duration::ZERO);
        assert_eq!(spin.window(), Duration::ZERO);
    }

    #[test]
    fn a_polling_wait_returns_what_is_ready() {
        let poller = Poller::new(7).unwrap();
        let mut spin = SpinPolicy::new(Duration::from_micros(100));
        spin.woke_after(Duration::from_micros(1));
        poller.wake();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert_eq!(
            poller.wait_spinning(&mut events, 100, &mut spin).unwrap(),
            1
        );
        assert_eq!({ events[0].u64 }, 7);
    }
}
