//! The shipped code task (examples/data/code-problems.jsonl): every reference solution passes
//! its tests in the sandbox and a wrong one fails, through the task's own grading. Skipped,
//! with a printed reason, where the sandbox cannot run.

use autodidact_core::{Grade, Split, Task};
use autodidact_tasks::extract::ExtractRule;
use autodidact_tasks::{Compare, JsonlConfig};
use std::path::Path;

#[test]
fn the_shipped_code_problems_pass_with_their_solutions_and_fail_without() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = JsonlConfig {
        extract: vec![ExtractRule::CodeBlock],
        compare: Compare::PythonTests,
        ..JsonlConfig::new(root.join("examples/data/code-problems.jsonl"))
    };
    let task = match config.build() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let mut all = task.problems(Split::Train, 0, 0).unwrap();
    let eval_count = (0..=50)
        .rev()
        .find(|&n| task.problems(Split::Eval, n, 0).is_ok())
        .unwrap();
    let train_count = (0..=50)
        .rev()
        .find(|&n| task.problems(Split::Train, n, 0).is_ok())
        .unwrap();
    assert_eq!(train_count + eval_count, 50);
    all.extend(task.problems(Split::Train, train_count, 0).unwrap());
    all.extend(task.problems(Split::Eval, eval_count, 0).unwrap());
    let solutions: Vec<(&autodidact_core::Problem, &str)> = all
        .iter()
        .map(|p| (p, p.solution.as_deref().unwrap()))
        .collect();
    for (v, (p, _)) in task
        .verify_batch(&solutions)
        .unwrap()
        .iter()
        .zip(&solutions)
    {
        assert!(v.is_correct(), "{}: {v:?}", p.id);
    }
    let wrong: Vec<(&autodidact_core::Problem, &str)> = all
        .iter()
        .map(|p| (p, "```python\ndef unrelated():\n    pass\n```"))
        .collect();
    for (v, (p, _)) in task.verify_batch(&wrong).unwrap().iter().zip(&wrong) {
        assert_eq!(v.grade, Grade::Incorrect, "{}: {v:?}", p.id);
        assert!(
            v.reason.as_deref().unwrap().contains("NameError"),
            "{}: {v:?}",
            p.id
        );
    }
    // A completion that loops forever is a wrong answer, stopped at a limit.
    let p = &all[0];
    let v = task.verify(p, "```python\nwhile True:\n    pass\n```");
    assert_eq!(v.grade, Grade::Incorrect);
    assert!(v.reason.unwrap().contains("limit"));
}
