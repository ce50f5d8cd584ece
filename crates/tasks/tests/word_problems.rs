//! The shipped JSONL task (examples/data/word-problems.jsonl) loads, splits, and every worked
//! solution verifies against its answer.

use autodidact_core::{Grade, Split, Task};
use autodidact_tasks::extract::ExtractRule;
use autodidact_tasks::JsonlConfig;
use std::path::Path;

#[test]
fn the_shipped_word_problems_load_and_their_solutions_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let task = JsonlConfig {
        extract: vec![ExtractRule::Marker],
        ..JsonlConfig::new(root.join("examples/data/word-problems.jsonl"))
    }
    .build()
    .unwrap();
    let train = task.problems(Split::Train, 2160, 0).unwrap();
    let eval = task.problems(Split::Eval, 200, 0).unwrap();
    for p in train.iter().chain(&eval) {
        let solution = p.solution.as_deref().unwrap();
        assert!(task.verify(p, solution).is_correct(), "{p:?}");
        let wrong = format!("{solution}1");
        assert_eq!(task.verify(p, &wrong).grade, Grade::Incorrect, "{p:?}");
    }
    let (prompt, solution) = task.max_chars();
    assert!(
        prompt + solution < 96,
        "examples/star-word-problems.toml sets context_length 96"
    );
}
