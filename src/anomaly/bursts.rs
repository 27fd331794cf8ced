//! Sliding-window counts of distinct things per subject: failed logins per
//! user (distinct sources) and per source (distinct user names), targets per
//! user. A subject "fires" once when its distinct count goes over the limit,
//! and again only after it was quiet for a whole window (once per burst).
//!
//! Bounded: at most [`MAX_SUBJECTS`] subjects per table (when full, the
//! longest-quiet one is forgotten) and at most `limit + 1` distinct things
//! per subject (the oldest is forgotten).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Subjects tracked per table at most.
pub const MAX_SUBJECTS: usize = 4096;

/// One subject's window.
#[derive(Debug)]
struct Window {
    /// Thing -> when it was last seen.
    seen: HashMap<String, Instant>,
    last: Instant,
    fired: bool,
}

/// What a subject that just went over its limit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    pub distinct: usize,
    /// Up to [`SAMPLE`] of the things, sorted.
    pub sample: Vec<String>,
}

/// How many things a [`Burst`] names.
pub const SAMPLE: usize = 8;

/// One table of subjects.
#[derive(Debug)]
pub struct Windows<K> {
    subjects: HashMap<K, Window>,
    limit: usize,
    window: Duration,
}

impl<K: Hash + Eq + Clone> Windows<K> {
    /// Fires when more than `limit` distinct things are seen within `window`.
    pub fn new(limit: usize, window: Duration) -> Self {
        Windows {
            subjects: HashMap::new(),
            limit,
            window,
        }
    }

    /// Records `thing` for `subject` at `now`; Some when this makes the
    /// subject go over the limit for the first time in this burst.
    pub fn record(&mut self, subject: &K, thing: &str, now: Instant) -> Option<Burst> {
        let window = self.window;
        if !self.subjects.contains_key(subject) {
            self.make_room(now);
            self.subjects.insert(
                subject.clone(),
                Window {
                    seen: HashMap::new(),
                    last: now,
                    fired: false,
                },
            );
        }
        let w = self.subjects.get_mut(subject)?;
        w.seen
            .retain(|_, t| now.saturating_duration_since(*t) <= window);
        if w.seen.is_empty() {
            // Quiet for a whole window: a new burst may fire again.
            w.fired = false;
        }
        w.last = now;
        w.seen.insert(thing.to_string(), now);
        while w.seen.len() > self.limit.saturating_add(1) {
            let oldest = w
                .seen
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => w.seen.remove(&k),
                None => break,
            };
        }
        if w.seen.len() > self.limit && !w.fired {
            w.fired = true;
            let mut sample: Vec<String> = w.seen.keys().cloned().collect();
            sample.sort();
            sample.truncate(SAMPLE);
            return Some(Burst {
                distinct: w.seen.len(),
                sample,
            });
        }
        None
    }

    /// Forgets subjects quiet for a window; if still full, the quietest.
    fn make_room(&mut self, now: Instant) {
        if self.subjects.len() < MAX_SUBJECTS {
            return;
        }
        let window = self.window;
        self.subjects
            .retain(|_, w| now.saturating_duration_since(w.last) <= window);
        while self.subjects.len() >= MAX_SUBJECTS {
            let quietest = self
                .subjects
                .iter()
                .min_by_key(|(_, w)| w.last)
                .map(|(k, _)| k.clone());
            match quietest {
                Some(k) => self.subjects.remove(&k),
                None => break,
            };
        }
    }

    /// How many subjects are tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.subjects.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_when_distinct_things_go_over_the_limit_within_the_window() {
        let t0 = Instant::now();
        let mut w = Windows::new(2, Duration::from_secs(60));
        let s = "alice".to_string();
        assert_eq!(w.record(&s, "10.0.0.1", t0), None);
        assert_eq!(w.record(&s, "10.0.0.1", t0), None);
        assert_eq!(w.record(&s, "10.0.0.2", t0), None);
        let b = w
            .record(&s, "10.0.0.3", t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(b.distinct, 3);
        assert_eq!(b.sample, vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        // The same burst goes on: no second event.
        assert_eq!(w.record(&s, "10.0.0.4", t0 + Duration::from_secs(2)), None);
        assert_eq!(w.record(&s, "10.0.0.5", t0 + Duration::from_secs(50)), None);
        // Quiet for a window, then a new burst fires again.
        let later = t0 + Duration::from_secs(200);
        assert_eq!(w.record(&s, "10.0.0.1", later), None);
        assert_eq!(w.record(&s, "10.0.0.2", later), None);
        assert!(w.record(&s, "10.0.0.3", later).is_some());
    }

    #[test]
    fn things_spread_over_more_than_the_window_do_not_fire() {
        let t0 = Instant::now();
        let mut w = Windows::new(2, Duration::from_secs(60));
        let s = "alice".to_string();
        for i in 0..10u64 {
            let thing = format!("10.0.0.{i}");
            assert_eq!(w.record(&s, &thing, t0 + Duration::from_secs(61 * i)), None);
        }
    }

    #[test]
    fn memory_is_bounded_per_table_and_per_subject() {
        let t0 = Instant::now();
        let mut w = Windows::new(3, Duration::from_secs(60));
        for i in 0..(MAX_SUBJECTS + 100) {
            w.record(&i, "x", t0);
        }
        assert!(w.len() <= MAX_SUBJECTS);
        for i in 0..1000 {
            w.record(&0usize, &i.to_string(), t0);
        }
        assert!(w.subjects[&0].seen.len() <= 4);
    }
}
