//! Reconfiguring the engine with a reloaded watch table: findings and unchanged watches' state
//! survive, removed watches are ignored even for observations normalized before the reload, new
//! watches judge from the next observation.

use super::*;

fn watches(text: &str) -> Vec<Watch> {
    Config::from_toml(text).unwrap().watches
}

fn on(o: Observation, slot: u16) -> Observation {
    let mut o = o;
    o.watched[0].watch = slot;
    o
}

#[test]
fn a_reload_keeps_findings_and_unchanged_state_and_judges_new_watches() {
    let cfg = Config::from_toml(
        "[[watch]]\nname = \"a\"\nattribute = \"a.id\"\n[[watch]]\nname = \"b\"\nattribute = \"b.id\"\n",
    )
    .unwrap();
    let mut engine = Engine::new(&cfg, Arc::new(Metrics::new()));
    let mut fx = Effects::default();
    for o in [
        obs(Some("alice"), None, "f1", 1, 2, "p1"),
        obs(Some("bob"), None, "f1", 3, 4, "p1"),
        obs(Some("carol"), None, "k", 1, 2, "p1"),
        on(obs(Some("alice"), None, "g", 1, 2, "p1"), 1),
    ] {
        engine.ingest(vec![o], at(1000), &mut fx);
    }
    assert_eq!(engine.findings.len(), 1);
    // b removed, c added; a only changes its severity.
    let new = watches(
        "[[watch]]\nname = \"c\"\nattribute = \"c.id\"\n[[watch]]\nname = \"a\"\nattribute = \"a.id\"\nseverity = \"warning\"\n",
    );
    let slots = vec![Some(new[1].clone()), None, Some(new[0].clone())];
    let mut fx = Effects::default();
    let changes = engine.reconfigure(&slots, &mut fx);
    assert_eq!(
        (changes.added, changes.removed, changes.changed),
        (vec!["c".into()], vec!["b".into()], vec!["a".into()])
    );
    assert_eq!(fx.evicted.len(), 1, "b's instance is forgotten");
    assert_eq!(engine.findings.len(), 1, "findings are history");
    let mut fx = Effects::default();
    for o in [
        // Normalized for b before the reload: ignored, not judged by another watch.
        on(obs(Some("bob"), None, "g", 3, 4, "p1"), 1),
        // a kept its instances: dave on k is a second user.
        obs(Some("dave"), None, "k", 3, 4, "p1"),
        on(obs(Some("alice"), None, "h", 1, 2, "p1"), 2),
        on(obs(Some("bob"), None, "h", 3, 4, "p1"), 2),
    ] {
        engine.ingest(vec![o], at(1001), &mut fx);
    }
    let mut found: Vec<(&str, &str)> = (engine.findings.values())
        .map(|r| (r.finding.watch.as_str(), r.finding.instance.as_str()))
        .collect();
    found.sort();
    assert_eq!(found, [("a", "f1"), ("a", "k"), ("c", "h")]);
    let report = engine.watch_evidence().lock().report(1001);
    let names: Vec<&str> = report.iter().map(|r| r.watch.as_str()).collect();
    assert!(!names.contains(&"b"), "{names:?}");
}

#[test]
fn a_watch_whose_attribute_changed_forgets_its_instances() {
    let cfg = Config::from_toml("[[watch]]\nname = \"a\"\nattribute = \"a.id\"\n").unwrap();
    let mut engine = Engine::new(&cfg, Arc::new(Metrics::new()));
    let mut fx = Effects::default();
    engine.ingest(
        vec![obs(Some("alice"), None, "f1", 1, 2, "p1")],
        at(1000),
        &mut fx,
    );
    let slots: Vec<Option<Watch>> = watches("[[watch]]\nname = \"a\"\nattribute = \"other.id\"\n")
        .into_iter()
        .map(Some)
        .collect();
    let changes = engine.reconfigure(&slots, &mut fx);
    assert_eq!(changes.reset, ["a"]);
    assert_eq!(engine.tracked_instances(), 0);
    engine.ingest(
        vec![obs(Some("bob"), None, "f1", 3, 4, "p1")],
        at(1001),
        &mut fx,
    );
    assert!(
        engine.findings.is_empty(),
        "alice's use was of another attribute"
    );
}
