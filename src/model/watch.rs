//! When `apply --watch` applies: the rule, apart from reading files and talking to systemd.
//!
//! The watcher reads the configuration's files every [`POLL`] and compares what it read with
//! what it last acted on. It applies a configuration once its files have stayed the same for
//! [`QUIET`] (a burst of edits is one apply), or once changes have kept coming for
//! [`MAX_DELAY`] (a writer that never stops still has its latest whole read applied). A
//! configuration that was refused (bad, or unreadable) is not tried again until its files
//! change; an apply that failed for another reason (systemd not answering, a write refused)
//! is tried again after [`RETRY_FIRST`], doubling up to [`RETRY_MAX`].
//!
//! Since the comparison is with the files as read, not with change events, an edit that
//! lands while an apply runs is seen at the next poll after it: the last configuration is in
//! force at most `POLL + QUIET` plus two applies' time after its last edit.

use std::time::{Duration, Instant};

/// How often the configuration's files are read.
pub const POLL: Duration = Duration::from_secs(1);
/// How long the files must stay unchanged before they are applied.
pub const QUIET: Duration = Duration::from_secs(2);
/// The longest a change waits while further changes keep coming.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// The first wait before a failed apply is tried again.
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between tries of a failing apply.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// One poll's reading of the configuration's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<S> {
    /// The files, read whole (or why they could not be read): what is compared.
    Read(S),
    /// A file kept changing while it was read: a write in progress.
    Changing,
}

/// Why the watcher applies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The watcher has just started: what is on disk is put in force.
    Start,
    /// The files differ from what was last acted on and have settled.
    Changed,
    /// The files are as they were when an apply failed, and its retry is due.
    Retry,
}

/// How an apply ended, for what the watcher does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// In force.
    Applied,
    /// The configuration was refused (bad, unreadable, untrusted) and nothing was changed:
    /// trying it again could only repeat that, so the next try waits for its files to change.
    Refused,
    /// Something other than the configuration failed: tried again after a backoff.
    Failed,
}

/// The watcher's memory between polls. `S` is whatever the caller compares the files by.
#[derive(Debug)]
pub struct Watcher<S> {
    /// The last poll's reading and when it was first seen (unchanged since).
    current: Option<(S, Instant)>,
    /// The first poll that saw files differing from `done` (None: nothing pending).
    pending_since: Option<Instant>,
    /// The files the last apply acted on.
    done: Option<S>,
    /// After a failure: when to try again, and the wait before that.
    retry: Option<(Instant, Duration)>,
}

impl<S> Default for Watcher<S> {
    fn default() -> Self {
        Watcher {
            current: None,
            pending_since: None,
            done: None,
            retry: None,
        }
    }
}

impl<S: Clone + PartialEq> Watcher<S> {
    /// Takes one poll's reading; `Some` with the files to apply when it is time to apply.
    pub fn observe(&mut self, now: Instant, seen: Seen<S>) -> Option<(Reason, S)> {
        let Seen::Read(files) = seen else {
            self.current = None;
            self.pending_since.get_or_insert(now);
            return None;
        };
        let since = match &self.current {
            Some((last, since)) if *last == files => *since,
            _ => now,
        };
        self.current = Some((files.clone(), since));
        let Some(done) = &self.done else {
            return Some((Reason::Start, files));
        };
        if *done == files {
            self.pending_since = None;
            return match self.retry {
                Some((at, _)) if now >= at => Some((Reason::Retry, files)),
                _ => None,
            };
        }
        let pending_since = *self.pending_since.get_or_insert(since);
        let settled = now.duration_since(since) >= QUIET;
        let overdue = now.duration_since(pending_since) >= MAX_DELAY;
        (settled || overdue).then_some((Reason::Changed, files))
    }

    /// Records how the apply of `files` (as [`Watcher::observe`] gave them) ended at `now`;
    /// after a failure, how long until it is tried again.
    pub fn finished(&mut self, now: Instant, files: S, outcome: Outcome) -> Option<Duration> {
        self.done = Some(files);
        self.pending_since = None;
        match outcome {
            Outcome::Applied => {
                self.retry = None;
                None
            }
            Outcome::Refused => {
                // A later failure of a good configuration starts its backoff afresh.
                self.retry = None;
                None
            }
            Outcome::Failed => {
                let wait = match self.retry {
                    Some((_, wait)) => (wait * 2).min(RETRY_MAX),
                    None => RETRY_FIRST,
                };
                self.retry = Some((now + wait, wait));
                Some(wait)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: f64) -> Instant {
        start + Duration::from_secs_f64(secs)
    }

    /// A watcher that has applied "a" at 0 s.
    fn applied_a() -> (Watcher<&'static str>, Instant) {
        let t0 = Instant::now();
        let mut w = Watcher::default();
        assert_eq!(
            w.observe(t0, Seen::Read("a")),
            Some((Reason::Start, "a")),
            "a watcher applies what it finds when it starts"
        );
        assert_eq!(w.finished(t0, "a", Outcome::Applied), None);
        (w, t0)
    }

    #[test]
    fn unchanged_files_are_not_applied_again() {
        let (mut w, t0) = applied_a();
        for s in 1..100 {
            assert_eq!(w.observe(at(t0, s as f64), Seen::Read("a")), None);
        }
    }

    #[test]
    fn a_burst_of_edits_is_one_apply_of_the_last_once_quiet() {
        let (mut w, t0) = applied_a();
        // An edit every second for 5 s: none is quiet for QUIET.
        for (s, files) in [(1.0, "b"), (2.0, "c"), (3.0, "d"), (4.0, "e"), (5.0, "f")] {
            assert_eq!(w.observe(at(t0, s), Seen::Read(files)), None, "{s}");
        }
        assert_eq!(w.observe(at(t0, 6.0), Seen::Read("f")), None);
        assert_eq!(
            w.observe(at(t0, 7.0), Seen::Read("f")),
            Some((Reason::Changed, "f"))
        );
        w.finished(at(t0, 7.5), "f", Outcome::Applied);
        assert_eq!(w.observe(at(t0, 8.5), Seen::Read("f")), None);
    }

    #[test]
    fn changes_that_never_stop_are_applied_every_max_delay() {
        let (mut w, t0) = applied_a();
        let mut applied = Vec::new();
        for s in 1..=30 {
            let files: &'static str = Box::leak(format!("v{s}").into_boxed_str());
            if let Some((reason, f)) = w.observe(at(t0, s as f64), Seen::Read(files)) {
                assert_eq!(reason, Reason::Changed);
                applied.push(s);
                w.finished(at(t0, s as f64), f, Outcome::Applied);
            }
        }
        // First change at 1 s, then one apply per MAX_DELAY (each poll sees the next one).
        assert_eq!(applied, [11, 22]);
    }

    #[test]
    fn a_read_that_kept_changing_restarts_the_quiet_period() {
        let (mut w, t0) = applied_a();
        assert_eq!(w.observe(at(t0, 1.0), Seen::Read("b")), None);
        assert_eq!(w.observe(at(t0, 2.0), Seen::Changing), None);
        assert_eq!(w.observe(at(t0, 3.0), Seen::Read("b")), None);
        assert_eq!(w.observe(at(t0, 4.0), Seen::Read("b")), None);
        assert_eq!(
            w.observe(at(t0, 5.0), Seen::Read("b")),
            Some((Reason::Changed, "b"))
        );
    }

    #[test]
    fn an_edit_during_an_apply_is_applied_after_it() {
        let (mut w, t0) = applied_a();
        w.observe(at(t0, 1.0), Seen::Read("b"));
        let (_, files) = w.observe(at(t0, 3.0), Seen::Read("b")).unwrap();
        // "c" is written while "b" is being applied (3 s to 6 s).
        w.finished(at(t0, 6.0), files, Outcome::Applied);
        assert_eq!(w.observe(at(t0, 7.0), Seen::Read("c")), None);
        assert_eq!(w.observe(at(t0, 8.0), Seen::Read("c")), None);
        assert_eq!(
            w.observe(at(t0, 9.0), Seen::Read("c")),
            Some((Reason::Changed, "c"))
        );
    }

    #[test]
    fn a_refused_configuration_waits_for_its_files_to_change() {
        let (mut w, t0) = applied_a();
        w.observe(at(t0, 1.0), Seen::Read("bad"));
        let (_, files) = w.observe(at(t0, 3.0), Seen::Read("bad")).unwrap();
        assert_eq!(w.finished(at(t0, 3.0), files, Outcome::Refused), None);
        for s in 4..600 {
            assert_eq!(w.observe(at(t0, s as f64), Seen::Read("bad")), None, "{s}");
        }
        w.observe(at(t0, 600.0), Seen::Read("good"));
        assert_eq!(
            w.observe(at(t0, 602.0), Seen::Read("good")),
            Some((Reason::Changed, "good"))
        );
    }

    #[test]
    fn a_failed_apply_is_retried_with_a_doubling_wait() {
        let (mut w, t0) = applied_a();
        w.observe(at(t0, 1.0), Seen::Read("b"));
        let mut now = 3.0;
        let (_, files) = w.observe(at(t0, now), Seen::Read("b")).unwrap();
        let mut waits = Vec::new();
        let mut files = files;
        for _ in 0..7 {
            let wait = w.finished(at(t0, now), files, Outcome::Failed).unwrap();
            waits.push(wait.as_secs());
            let due = now + wait.as_secs_f64();
            assert_eq!(w.observe(at(t0, due - 0.5), Seen::Read("b")), None);
            let (reason, again) = w.observe(at(t0, due), Seen::Read("b")).unwrap();
            assert_eq!(reason, Reason::Retry);
            (now, files) = (due, again);
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        // Success ends the retries, and the next failure starts from the first wait.
        assert_eq!(w.finished(at(t0, now), files, Outcome::Applied), None);
        assert_eq!(w.observe(at(t0, now + 1000.0), Seen::Read("b")), None);
        w.observe(at(t0, now + 1001.0), Seen::Read("c"));
        let (_, files) = w.observe(at(t0, now + 1003.0), Seen::Read("c")).unwrap();
        assert_eq!(
            w.finished(at(t0, now + 1003.0), files, Outcome::Failed),
            Some(RETRY_FIRST)
        );
    }

    #[test]
    fn a_change_during_a_backoff_is_applied_without_waiting_for_the_retry() {
        let (mut w, t0) = applied_a();
        w.observe(at(t0, 1.0), Seen::Read("b"));
        let (_, files) = w.observe(at(t0, 3.0), Seen::Read("b")).unwrap();
        w.finished(at(t0, 3.0), files, Outcome::Failed);
        w.observe(at(t0, 4.0), Seen::Read("c"));
        assert_eq!(
            w.observe(at(t0, 6.0), Seen::Read("c")),
            Some((Reason::Changed, "c"))
        );
    }
}
