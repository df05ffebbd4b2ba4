//! Progress reporting: a terminal bar with loss and ETA in the CLI, nothing in tests.

/// Progress reporting hooks (a terminal bar in the CLI, nothing in tests).
pub trait Progress {
    fn stage(&self, _message: &str) {}
    fn start(&self, _total: u64) {}
    fn update(&self, _position: u64, _loss: f32) {}
    fn finish(&self) {}
    /// Asked before every training step: `true` stops the encode there with
    /// [`crate::Error::Cancelled`] (a batch worker told to stop by its scheduler).
    fn cancelled(&self) -> bool {
        false
    }
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// An indicatif bar on stderr with loss and ETA; hidden when stderr is not a terminal.
pub struct BarProgress {
    bar: indicatif::ProgressBar,
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
        BarProgress { bar }
    }
}

impl Progress for BarProgress {
    fn stage(&self, message: &str) {
        self.bar.set_prefix(message.to_string());
    }
    fn start(&self, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
    }
    fn update(&self, position: u64, loss: f32) {
        self.bar.set_position(position);
        self.bar.set_message(format!("{loss:.3e}"));
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
