//! The skip protocol's log line: what `scripts/check-skips` parses.

#[test]
fn a_skip_appends_one_tab_separated_line_naming_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips");
    std::fs::write(&log, "earlier\tline\tkept\n").unwrap();
    // This process runs only this test (nextest), and the var points away from scripts/test's log
    // so this deliberate skip is not counted as one.
    std::env::set_var(rds_testkit::SKIP_LOG_ENV, &log);
    rds_testkit::skip("no\tfrobnicator\non this host");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert_eq!(lines[0], "earlier\tline\tkept");
    let fields: Vec<&str> = lines[1].split('\t').collect();
    assert_eq!(fields.len(), 3, "{text:?}");
    assert!(fields[0].contains("skip"), "binary: {text:?}");
    assert_eq!(fields[1], "a_skip_appends_one_tab_separated_line_naming_the_test");
    assert_eq!(fields[2], "no frobnicator on this host");
}
