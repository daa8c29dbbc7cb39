//! `[[watch]] allow_instances`: the listed instances may serve many users, the rest of the watch
//! is judged as ever, and evidence counts them as allowed rather than leaking.

use super::*;

#[test]
fn allowed_instances_never_make_findings_and_the_rest_of_the_watch_still_does() {
    let cfg = Config::from_toml(
        "[[watch]]\nname = \"w\"\nattribute = \"a\"\nallow_instances = [\"shared\"]\n",
    )
    .unwrap();
    let uses = vec![
        obs(Some("alice"), None, "shared", 1, 2, "p1"),
        obs(Some("bob"), None, "shared", 3, 4, "p1"),
        obs(Some("carol"), None, "shared", 5, 6, "p1"),
        obs(Some("alice"), None, "f1", 1, 2, "p1"),
        obs(Some("bob"), None, "f1", 3, 4, "p1"),
    ];
    let (engine, findings) = run(&cfg, uses);
    let instances: Vec<&str> = findings.iter().map(|f| &*f.finding.instance).collect();
    assert_eq!(instances, ["f1"]);
    let report = engine.watch_evidence().lock().report(1000);
    assert_eq!(report[0].window.allowed_observations, 3);
    assert_eq!(
        report[0].window.max_users_per_instance, 2,
        "the shared instance's three users are not counted against isolation"
    );
}
