//! Config tests: defaults, strictness, and that every error names its key.

use std::time::Duration;

use super::resolve::{Named, parse_named};
use super::*;

#[test]
fn embedded_default_is_valid_and_watches_session_globally() {
    let cfg = Config::default_config();
    let session = cfg.watches.iter().find(|w| w.attribute == "session.id");
    let session = session.expect("default watches session.id");
    assert_eq!(session.policy, Policy::Exclusive);
    assert_eq!(session.scope, Scope::Global);
    assert_eq!(cfg.listen.admin.port(), 9477);
}

#[test]
fn empty_file_takes_defaults() {
    let cfg = Config::from_toml("").unwrap();
    assert_eq!(cfg.identity.user_attributes, ["user.id", "enduser.id"]);
    assert_eq!(
        cfg.watches.len(),
        4,
        "a file without [[watch]] keeps the default watches"
    );
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(10));
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml("[listen]\nadmn = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(err.to_string().contains("admn"), "{err}");
}

#[test]
fn bad_policy_is_named_with_its_key() {
    let text = "[[watch]]\nname=\"f\"\nattribute=\"a\"\npolicy=\"sometimes\"\n";
    let err = Config::from_toml(text).unwrap_err().to_string();
    assert!(
        err.contains("watch[0].policy") && err.contains("sometimes"),
        "{err}"
    );
}

#[test]
fn duplicate_watch_names_are_rejected() {
    let text = "[[watch]]\nname=\"f\"\nattribute=\"a\"\n[[watch]]\nname=\"f\"\nattribute=\"b\"\n";
    let err = Config::from_toml(text).unwrap_err().to_string();
    assert!(err.contains("watch[1].name"), "{err}");
}

#[test]
fn bad_address_and_duration_are_named() {
    let err = Config::from_toml("[listen]\nadmin=\"nowhere\"\n").unwrap_err();
    assert!(err.to_string().contains("listen.admin"));
    let err = Config::from_toml("[attribution]\nwait=\"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("attribution.wait"));
}

#[test]
fn event_fields_can_be_remapped_to_paths() {
    let cfg = Config::from_toml("[events.fields]\nuser = \"payload.user_id\"\n").unwrap();
    assert_eq!(cfg.events.fields.user, "payload.user_id");
    assert_eq!(cfg.events.fields.connection, "connection_id");
}

proptest::proptest! {
    /// Arbitrary text is a config or an error naming what is wrong, never a panic.
    #[test]
    fn any_text_parses_or_errs(text in "(\\PC|\\n|\\[|\\]|=|\"){0,400}") {
        if let Err(e) = Config::from_toml(&text) {
            proptest::prop_assert!(!e.to_string().is_empty());
        }
    }
}

/// Each name table parses what it prints, and its error lists the whole table.
fn round_trips<T: Named + std::fmt::Debug>() {
    for (name, value) in T::NAMES {
        assert_eq!(value.name(), *name);
        assert_eq!(parse_named::<T>("k", name).unwrap(), *value);
    }
    let err = parse_named::<T>("k", "nope").unwrap_err().to_string();
    let all: Vec<&str> = T::NAMES.iter().map(|(n, _)| *n).collect();
    assert!(err.contains(&all.join(", ")), "{err}");
}

#[test]
fn name_tables_round_trip() {
    round_trips::<Policy>();
    round_trips::<Scope>();
    round_trips::<Boundary>();
    round_trips::<Severity>();
    round_trips::<UserIds>();
    round_trips::<StartAt>();
}

#[test]
fn severity_is_parsed_and_named_with_its_key() {
    let text = "[[watch]]\nname=\"f\"\nattribute=\"a\"\nseverity=\"warning\"\n";
    assert_eq!(
        Config::from_toml(text).unwrap().watches[0].severity,
        Severity::Warning
    );
    let text = "[[watch]]\nname=\"f\"\nattribute=\"a\"\nseverity=\"loud\"\n";
    let err = Config::from_toml(text).unwrap_err().to_string();
    assert!(
        err.contains("watch[0].severity") && err.contains("critical, warning, info"),
        "{err}"
    );
}

#[test]
fn evidence_window_and_expected_watches() {
    let c = Config::default_config();
    assert_eq!(c.evidence_window, Duration::from_secs(24 * 3600));
    assert!(c.watches.iter().all(|w| !w.expected));
    let text = "[evidence]\nwindow=\"2h\"\n[[watch]]\nname=\"f\"\nattribute=\"a\"\nexpected=true\n";
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.evidence_window, Duration::from_secs(7200));
    assert!(c.watches[0].expected);
    let err = Config::from_toml("[evidence]\nwindow=\"10s\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("evidence.window"), "{err}");
}

#[test]
fn readme_lists_every_environment_variable() {
    let readme = include_str!("../../README.md");
    for name in super::env_names() {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README does not list {name}"
        );
    }
}

#[test]
fn watches_default_unless_the_file_lists_its_own_or_says_none() {
    let ports_only = Config::from_toml("[listen]\nadmin = \"127.0.0.1:1\"\n").unwrap();
    assert!(ports_only.default_watches);
    assert_eq!(
        ports_only.watches.len(),
        Config::default_config().watches.len()
    );
    let none = Config::from_toml("watch = []\n").unwrap();
    assert!(none.watches.is_empty() && !none.default_watches);
    let own = Config::from_toml("[[watch]]\nname = \"w\"\nattribute = \"a\"\n").unwrap();
    assert_eq!(own.watches.len(), 1);
    assert!(!own.default_watches);
}

#[test]
fn environment_values_are_typed_and_unknown_names_collected() {
    let env = |pairs: &[(&str, &str)]| {
        super::Overrides::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    };
    let o = env(&[
        ("CROSSTALK_LIMITS_QUEUE_CAPACITY", "7"),
        ("CROSSTALK_IDENTITY_USER_ATTRIBUTES", "uid, user.id"),
        ("CROSSTALK_LOG_FORMAT", "json"),
        ("CROSSTALK_COLOUR", "red"),
        ("HOME", "/root"),
    ])
    .unwrap();
    assert_eq!(o.unknown_env, vec!["CROSSTALK_COLOUR".to_owned()]);
    let c = Config::load_with(None, &o).unwrap();
    assert_eq!(c.limits.queue_capacity, 7);
    assert_eq!(c.identity.user_attributes, ["uid", "user.id"]);
    let bad = env(&[("CROSSTALK_LIMITS_QUEUE_CAPACITY", "lots")]).unwrap_err();
    assert!(
        bad.to_string().contains("CROSSTALK_LIMITS_QUEUE_CAPACITY"),
        "{bad}"
    );
}

#[test]
fn discovery_is_on_by_default_and_its_keys_are_checked() {
    let cfg = Config::from_toml("").unwrap();
    assert!(cfg.discovery.enabled);
    assert_eq!((cfg.discovery.max_keys, cfg.discovery.min_users), (1000, 5));
    let cfg =
        Config::from_toml("[discovery]\nenabled = false\nexclude = [\"internal.\"]\n").unwrap();
    assert!(!cfg.discovery.enabled);
    assert_eq!(cfg.discovery.exclude, ["internal."]);
    for (text, key) in [
        ("[discovery]\nsample = 0.0\n", "discovery.sample"),
        ("[discovery]\nmax_keys = 0\n", "discovery.max_keys"),
        ("[discovery]\nmin_users = 1\n", "discovery.min_users"),
    ] {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
    assert!(Config::from_toml("[discovery]\nbogus = 1\n").is_err());
}

#[test]
fn allow_instances_are_listed_and_checked() {
    let c = Config::from_toml(
        "[[watch]]\nname = \"cache\"\nattribute = \"a\"\nallow_instances = [\"shared-ro\"]\n",
    )
    .unwrap();
    assert!(c.watches[0].allows_instance("shared-ro"));
    assert!(!c.watches[0].allows_instance("other"));
    assert!(c.watches[0].summary().contains("allow_instances shared-ro"));
    let e =
        Config::from_toml("[[watch]]\nname = \"w\"\nattribute = \"a\"\nallow_instances = [\"\"]\n")
            .unwrap_err();
    assert!(e.to_string().contains("watch[0].allow_instances"), "{e}");
}

#[test]
fn findings_retention_defaults_to_thirty_days_and_must_be_a_positive_duration() {
    let c = Config::default_config();
    assert_eq!(c.findings_retention, Duration::from_secs(30 * 24 * 3600));
    let c = Config::from_toml("[storage]\nfindings_retention = \"12h\"\n").unwrap();
    assert_eq!(c.findings_retention, Duration::from_secs(12 * 3600));
    for bad in ["0s", "soon"] {
        let text = format!("[storage]\nfindings_retention = \"{bad}\"\n");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("storage.findings_retention"), "{err}");
    }
}
