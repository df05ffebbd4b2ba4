//! Progress reporting: a terminal bar with loss and ETA in the CLI, nothing in tests.

/// Progress reporting hooks (a terminal bar in the CLI, nothing in tests).
pub trait Progress {
    fn stage(&self, _message: &str) {}
    fn start(&self, _total: u64) {}
    fn update(&self, _position: u64, _loss: f32) {}
    fn finish(&self) {}
    /// A decision the encode made (a width chosen or widened, a schedule shortened, phase 2
    /// skipped): shown when it is made, since the training after it may run for an hour. The
    /// report's `notes` hold the same lines.
    fn note(&self, _message: &str) {}
    /// Asked before every training step: `true` stops the encode there with
    /// [`crate::Error::Cancelled`] (a batch worker told to stop by its scheduler).
    fn cancelled(&self) -> bool {
        false
    }
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// An indicatif bar on stderr with loss and ETA. When stderr is not a terminal (a log file, a
/// scheduler's log) the bar hides itself and a plain line is written instead at the start of
/// each stage and then at most every [`LOG_EVERY`] seconds, so long encodes still show where
/// they are.
pub struct BarProgress {
    bar: indicatif::ProgressBar,
    /// `Some` when stderr is not a terminal: the plain-line log's state.
    log: Option<std::sync::Mutex<PlainLog>>,
}

/// Seconds between plain progress lines.
pub const LOG_EVERY: u64 = 60;

#[derive(Default)]
struct PlainLog {
    /// The stage's name ("training" until a stage is named).
    stage: String,
    total: u64,
    started: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
}

impl Default for BarProgress {
    fn default() -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps  rmse {msg}  {elapsed_precise} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        use std::io::IsTerminal;
        let log = (!std::io::stderr().is_terminal()).then(|| {
            std::sync::Mutex::new(PlainLog {
                stage: "training".into(),
                ..PlainLog::default()
            })
        });
        BarProgress { bar, log }
    }
}

impl BarProgress {
    fn with_log(&self, f: impl FnOnce(&mut PlainLog)) {
        if let Some(log) = &self.log {
            // A poisoned lock only means an earlier line panicked; the state is still usable.
            f(&mut log.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

impl Progress for BarProgress {
    fn stage(&self, message: &str) {
        self.bar.set_prefix(message.to_string());
        self.with_log(|l| l.stage = message.to_string());
    }
    fn start(&self, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
        self.with_log(|l| {
            let now = std::time::Instant::now();
            (l.total, l.started, l.last) = (total, Some(now), Some(now));
            eprintln!("{}: {total} steps", l.stage);
        });
    }
    fn update(&self, position: u64, loss: f32) {
        self.bar.set_position(position);
        self.bar.set_message(format!("{loss:.3e}"));
        self.with_log(|l| {
            let now = std::time::Instant::now();
            let due = l
                .last
                .is_none_or(|t| now.duration_since(t).as_secs() >= LOG_EVERY);
            if due || position == l.total {
                l.last = Some(now);
                let secs = l.started.map_or(0, |t| now.duration_since(t).as_secs());
                eprintln!(
                    "{}: step {position}/{} loss {loss:.3e} ({secs} s)",
                    l.stage, l.total
                );
            }
        });
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
    fn note(&self, message: &str) {
        // Above the bar on a terminal (`println` would drop the line once a bar has finished,
        // as before the retry note), a plain line in a log.
        self.bar.suspend(|| eprintln!("note: {message}"));
    }
}
