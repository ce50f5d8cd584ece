//! The math-equivalence table: every pair of `data/math_equivalence.tsv`, in both orders.

use autodidact_tasks::math::equivalent;

#[test]
fn every_pair_of_the_equivalence_table_holds_in_both_orders() {
    let table = include_str!("data/math_equivalence.tsv");
    let (mut pairs, mut equal, mut failures) = (0, 0, Vec::new());
    for (i, line) in table.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cols.len(),
            4,
            "line {}: want 4 tab-separated columns: {line:?}",
            i + 1
        );
        let want = match cols[0] {
            "=" => true,
            "!=" => false,
            other => panic!("line {}: expected `=` or `!=`, not {other:?}", i + 1),
        };
        pairs += 1;
        equal += want as usize;
        for (a, b) in [(cols[1], cols[2]), (cols[2], cols[1])] {
            if equivalent(a, b) != want {
                failures.push(format!(
                    "line {}: {a:?} {} {b:?} ({})",
                    i + 1,
                    if want {
                        "should equal"
                    } else {
                        "should differ from"
                    },
                    cols[3]
                ));
            }
        }
    }
    assert!(
        pairs >= 150 && equal >= 50 && pairs - equal >= 50,
        "{pairs} pairs, {equal} equal"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
