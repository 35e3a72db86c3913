//! Delta debugging (Zeller's ddmin) with a time budget: given a failing list
//! and a test that replays any sub-list, find a shorter list that still
//! fails. Generic over the items; knows nothing of umbra.

use std::time::{Duration, Instant};

/// What replaying a candidate list gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Failed; the items after index `at` played no part (the failure showed
    /// while or right after replaying item `at`), so they can be dropped.
    Fail {
        at: usize,
        message: String,
    },
}

/// The outcome of a shrink.
#[derive(Clone, Debug)]
pub struct Shrunk<T> {
    pub items: Vec<T>,
    pub message: String,
    pub trials: usize,
    /// False when the budget ran out before the list was 1-minimal.
    pub minimal: bool,
}

/// The shortest tail tried first (see `ddmin`).
const FIRST_TAIL: usize = 64;

/// Shrinks `items`, which failed with `message` at index `at`, replaying
/// candidates with `test` until the list is 1-minimal or `budget` is spent.
///
/// Before bisecting, the list's tails are tried, shortest first, each twice
/// as long as the one before: a soak's failure a million items in most
/// often needs only the last few hundred, and bisection would replay half
/// the list just to try the first cut. A replay costs about its length, so
/// finding a tail costs about twice that tail, and the budget can stop the
/// search after a short replay rather than a long one.
pub fn ddmin<T: Clone>(
    items: Vec<T>,
    at: usize,
    message: String,
    budget: Duration,
    mut test: impl FnMut(&[T]) -> Verdict,
) -> Shrunk<T> {
    let start = Instant::now();
    let mut best = items;
    best.truncate(at.saturating_add(1));
    let mut message = message;
    let mut trials = 0;
    let mut n = 2usize;
    let out_of_time = |start: Instant| start.elapsed() >= budget;
    let mut tail = FIRST_TAIL;
    while tail <= best.len() / 2 && !out_of_time(start) {
        let candidate = best[best.len() - tail..].to_vec();
        trials += 1;
        if let Verdict::Fail { at, message: m } = test(&candidate) {
            best = candidate;
            best.truncate(at.saturating_add(1));
            message = m;
            break;
        }
        tail *= 2;
    }
    while best.len() >= 2 {
        if out_of_time(start) {
            return Shrunk {
                items: best,
                message,
                trials,
                minimal: false,
            };
        }
        let len = best.len();
        let n_eff = n.min(len);
        let bounds: Vec<(usize, usize)> = (0..n_eff)
            .map(|i| (i * len / n_eff, (i + 1) * len / n_eff))
            .collect();
        let mut reduced = false;
        // Complements first: on an operation list, removing a chunk keeps
        // the set-up the failure needs far more often than keeping one.
        for &(lo, hi) in &bounds {
            if out_of_time(start) {
                return Shrunk {
                    items: best,
                    message,
                    trials,
                    minimal: false,
                };
            }
            let candidate: Vec<T> = best[..lo].iter().chain(&best[hi..]).cloned().collect();
            trials += 1;
            if let Verdict::Fail { at, message: m } = test(&candidate) {
                best = candidate;
                best.truncate(at.saturating_add(1));
                message = m;
                n = (n_eff - 1).max(2);
                reduced = true;
                break;
            }
        }
        if reduced {
            continue;
        }
        if n_eff > 2 {
            for &(lo, hi) in &bounds {
                if out_of_time(start) {
                    return Shrunk {
                        items: best,
                        message,
                        trials,
                        minimal: false,
                    };
                }
                let candidate: Vec<T> = best[lo..hi].to_vec();
                trials += 1;
                if let Verdict::Fail { at, message: m } = test(&candidate) {
                    best = candidate;
                    best.truncate(at.saturating_add(1));
                    message = m;
                    n = 2;
                    reduced = true;
                    break;
                }
            }
        }
        if reduced {
            continue;
        }
        if n_eff >= len {
            break; // every single item is needed: 1-minimal
        }
        n = (n_eff * 2).min(len);
    }
    Shrunk {
        items: best,
        message,
        trials,
        minimal: true,
    }
}
