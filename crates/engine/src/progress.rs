//! How stages report progress: the engine calls an [`Observer`]; the CLI draws progress bars
//! on a terminal and plain lines elsewhere.

/// Receives progress of a run's stages.
pub trait Observer {
    /// A stage begins; `total` units of work (problems, steps) are ahead.
    fn stage_started(&mut self, stage: &str, total: u64);
    /// `done` of the stage's units are finished and `tokens` tokens processed so far.
    fn stage_progress(&mut self, done: u64, tokens: u64);
    /// The stage ended; `summary` is one line of its results.
    fn stage_finished(&mut self, summary: &str);
    /// A note that is not progress (a warning, a resumed stage).
    fn note(&mut self, line: &str);
}

/// An observer that reports nothing.
pub struct Silent;

impl Observer for Silent {
    fn stage_started(&mut self, _: &str, _: u64) {}
    fn stage_progress(&mut self, _: u64, _: u64) {}
    fn stage_finished(&mut self, _: &str) {}
    fn note(&mut self, _: &str) {}
}

/// An observer that continues a stage's progress from where an earlier pass left it:
/// `done` units and `tokens` tokens are added to what it is told.
pub struct Offset<'a> {
    pub inner: &'a mut dyn Observer,
    pub done: u64,
    pub tokens: u64,
}

impl Observer for Offset<'_> {
    fn stage_started(&mut self, stage: &str, total: u64) {
        self.inner.stage_started(stage, total)
    }
    fn stage_progress(&mut self, done: u64, tokens: u64) {
        self.inner
            .stage_progress(self.done + done, self.tokens + tokens)
    }
    fn stage_finished(&mut self, summary: &str) {
        self.inner.stage_finished(summary)
    }
    fn note(&mut self, line: &str) {
        self.inner.note(line)
    }
}
