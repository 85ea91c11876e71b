//! The configuration's unit tests: each stage on texts, and the hook's record held to the
//! answer of a full validation.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::lines::LineIndex;
use super::*;
use crate::model::diagnostics::{Diagnostic, Location};
use crate::model::names::{GroupName, UserName};
use crate::model::values::{CpuQuota, MemoryLimit};
use crate::plan;
use crate::plan::HookTarget;
use crate::state::cache::{self, for_hook};

const MAIN: &str = "\
default_group: student
enforcement:
  aggregate_limits: true
  cgroup_driver: systemd
groups:
  student:
    max_cpus: 32
    aggregate:
      cpu_quota: \"9600%\"
      memory_max: \"96G\"
      memory_high: \"86G\"
      tasks_max: 12288
      gpu_limit: 2.0
  admin:
    max_cpus: 64
";

fn parse(
    main: &str,
    members: &[(&str, &str)],
    overrides: Option<&str>,
) -> Result<Config, ConfigError> {
    parse_texts(
        Path::new("/cfg/resource-limits.yaml"),
        main,
        members,
        overrides,
    )
}

fn errors(result: Result<Config, ConfigError>) -> Vec<Diagnostic> {
    match result {
        Err(ConfigError::Invalid(d)) => d.errors().cloned().collect(),
        other => panic!("expected invalid config, got {other:?}"),
    }
}

#[test]
fn line_index_finds_nested_keys() {
    let idx = LineIndex::new(MAIN);
    assert_eq!(
        idx.find(&["groups", "student", "aggregate", "memory_high"]),
        Some(11)
    );
    assert_eq!(idx.find(&["groups", "admin"]), Some(14));
    assert_eq!(idx.find(&["enforcement", "cgroup_driver"]), Some(4));
    assert_eq!(idx.find(&["groups", "student", "nope"]), Some(6));
    let groups = idx.child_lines(&["groups"]);
    assert_eq!((groups["student"], groups["admin"]), (6, 14));
    assert_eq!(idx.child_lines(&[])["enforcement"], 2);
}

#[test]
fn resolves_members_defaults_and_overrides() {
    let config = parse(
        MAIN,
        &[("student", "alice\n# comment\n  h.baker@hertie-school.lan  \n\n"), ("admin", "root_like\nalice\n")],
        Some("alice:\n  aggregate:\n    memory_max: infinity\n    memory_high: 100G\nbob:\n  aggregate: null\n"),
    )
    .unwrap();
    assert_eq!(config.members.len(), 3);
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].message.contains("first group wins"));
    let alice = config.resolve(&UserName::new("alice").unwrap()).unwrap();
    assert_eq!(alice.group.as_str(), "student");
    let agg = alice.aggregate.unwrap();
    assert_eq!(agg.memory_max, Some(MemoryLimit::Infinity));
    assert_eq!(agg.memory_high, Some(MemoryLimit::Bytes(100 << 30)));
    assert_eq!(agg.cpu_quota, Some(CpuQuota::Percent(9600)));
    let baker = config.resolve(&UserName::new("h_baker").unwrap()).unwrap();
    assert_eq!(baker.name.as_str(), "h.baker@hertie-school.lan");
    assert_eq!(baker.slice.as_str(), "ds01-student-h_baker.slice");
    let admin = config
        .resolve(&UserName::new("root_like").unwrap())
        .unwrap();
    assert!(admin.aggregate.is_none());
    let bob = config.resolve(&UserName::new("bob").unwrap()).unwrap();
    assert!(!bob.listed && bob.aggregate.is_none());
    let carol = config.resolve(&UserName::new("carol").unwrap()).unwrap();
    assert_eq!(carol.group.as_str(), "student");
    assert!(carol.aggregate.is_some());
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let main = MAIN
        .replace("memory_high: \"86G\"", "memory_high: \"99G\"")
        .replace("tasks_max: 12288", "taskmax: 12288");
    let errs = errors(parse(&main, &[], None));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs
        .iter()
        .any(|e| e.location.line == Some(12) && e.message.contains("did you mean `tasks_max`")));
}
/// Names chosen to collide: the same person as `a.b`, `a_b`, `A.B@x` (sanitized alike in
/// part), listed in several groups, some twice.
const NAMES: [&str; 8] = ["a.b", "a_b", "a.b@x", "A.B", "cc", "cc@y", "d-e", "d_e"];

/// Users the configurations never name, some sanitized like the names above, one that
/// sanitizes to nothing.
const STRANGERS: [&str; 7] = [
    "nobody.listed",
    "a.b@other",
    " a b ",
    "cc@z",
    "d.e",
    "A_B",
    "@bad",
];

const SAMPLE_PATH: &str = "/c/resource-limits.yaml";

struct Texts {
    main: String,
    members: Vec<(&'static str, String)>,
    overrides: String,
}

impl Texts {
    fn members(&self) -> Vec<(&str, &str)> {
        self.members.iter().map(|(g, t)| (*g, t.as_str())).collect()
    }

    fn sources(&self) -> Sources {
        Sources::from_texts(
            Path::new(SAMPLE_PATH),
            &self.main,
            &self.members(),
            Some(&self.overrides),
        )
    }

    fn digests(&self) -> Digests {
        self.sources().digests()
    }

    /// The full validation, and the record it leaves.
    fn validated(&self) -> (Config, String) {
        let sources = self.sources();
        let digests = sources.digests();
        let config = sources.validate().expect("a valid sample");
        let record =
            cache::encode(&config, &digests).expect("a validated configuration has a record");
        (config, record)
    }

    /// What a hook whose files are these texts takes from `record` for `user`.
    fn cached(&self, record: &str, user: &str) -> Option<HookTarget> {
        cache::lookup(record, &self.digests(), &UserName::new(user).unwrap())
    }
}

fn sample_texts(student: &[usize], researcher: &[usize], overridden: &[usize]) -> Texts {
    let list = |idx: &[usize]| {
        idx.iter()
            .map(|&i| format!("{}\n", NAMES[i]))
            .collect::<String>()
    };
    let overrides: String = overridden
        .iter()
        .map(|&i| {
            format!(
                "{:?}:\n  aggregate:\n    tasks_max: {}\n",
                NAMES[i],
                100 + i
            )
        })
        .collect();
    Texts {
        main: format!("{MAIN}  researcher:\n    aggregate:\n      memory_max: \"200G\"\n"),
        members: vec![("student", list(student)), ("researcher", list(researcher))],
        overrides,
    }
}

fn sample_sources(student: &[usize], researcher: &[usize], overridden: &[usize]) -> Sources {
    sample_texts(student, researcher, overridden).sources()
}

/// The record's answer for `user` is the full validation's, plan included; and it has one
/// for every user the full validation resolves (a record that never answers would be correct
/// and useless).
fn assert_cached_as_validated(
    config: &Config,
    record: &str,
    digests: &Digests,
    user: &str,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let user = UserName::new(user).unwrap();
    let cached = cache::lookup(record, digests, &user);
    match (cached, config.resolve(&user)) {
        (Some(cached), Ok(resolved)) => {
            proptest::prop_assert_eq!(&cached, &HookTarget::from_config(config, &user).unwrap());
            proptest::prop_assert_eq!(cached.listed, resolved.listed);
            proptest::prop_assert_eq!(
                plan::plan_hook(&cached),
                plan::plan_resolved(config, &resolved)
            );
        }
        (None, Err(_)) => {}
        (cached, full) => proptest::prop_assert!(
            false,
            "{user}: the record says {cached:?}, a full validation {full:?}"
        ),
    }
    Ok(())
}

proptest::proptest! {
    /// The hook's shortcut (the record of a configuration validated before) resolves every
    /// user exactly as the full validation does: listed users found by name or by a
    /// colliding sanitized name, override-only users, users nobody named, with and without
    /// a default group.
    #[test]
    fn trusted_resolution_equals_full_validation(
        student in proptest::collection::vec(0..NAMES.len(), 0..6),
        researcher in proptest::collection::vec(0..NAMES.len(), 0..6),
        overridden in proptest::collection::btree_set(0..NAMES.len(), 0..4),
        default_group in proptest::bool::weighted(0.8),
    ) {
        let overridden: Vec<usize> = overridden.into_iter().collect();
        let mut texts = sample_texts(&student, &researcher, &overridden);
        if !default_group {
            texts.main = texts.main.replace("default_group: student\n", "");
        }
        let sources = texts.sources();
        let digests = sources.digests();
        let full = sources.validate();
        // Only configurations a full validation accepts are ever recorded.
        proptest::prop_assume!(full.is_ok());
        let full = full.unwrap();
        let record = cache::encode(&full, &digests).expect("a validated configuration has a record");
        for user in NAMES.iter().chain(&STRANGERS) {
            assert_cached_as_validated(&full, &record, &digests, user)?;
        }
    }
}

#[test]
fn a_record_is_trusted_only_for_the_texts_it_was_made_from() {
    let texts = sample_texts(&[0, 4], &[6], &[4]);
    let (_, record) = texts.validated();
    assert!(texts.cached(&record, "cc").is_some());
    let edits: [fn(&mut Texts); 5] = [
        |t| t.main.push_str("# edited\n"),
        |t| t.members[0].1.push_str("cc\n"),
        |t| t.members[1].1.clear(),
        // A members file the main file names, absent when the record was made.
        |t| {
            t.main
                .push_str("  faculty:\n    aggregate: {tasks_max: 5}\n")
        },
        |t| t.overrides.push(' '),
    ];
    for edit in edits {
        let mut changed = sample_texts(&[0, 4], &[6], &[4]);
        edit(&mut changed);
        assert!(changed.cached(&record, "cc").is_none());
    }
    let mut no_overrides = sample_sources(&[0, 4], &[6], &[4]).digests();
    no_overrides.overrides = None;
    assert!(cache::lookup(&record, &no_overrides, &UserName::new("cc").unwrap()).is_none());
    assert!(texts.cached("", "cc").is_none());
}

#[test]
fn a_record_whose_body_was_edited_is_not_trusted() {
    let texts = sample_texts(&[0, 4], &[6], &[4]);
    let (_, record) = texts.validated();
    let moved_to_admin = record.replace("m\tcc\tcc\tstudent\t", "m\tcc\tcc\tadmin\t");
    assert_ne!(moved_to_admin, record, "the edit took");
    assert!(texts.cached(&moved_to_admin, "cc").is_none());
    let more_tasks = record.replace("TasksMax=104", "TasksMax=9104");
    assert_ne!(more_tasks, record, "the edit took");
    assert!(texts.cached(&more_tasks, "cc").is_none());
    assert!(texts.cached(&record.replace("\n", "\r\n"), "cc").is_none());
}

#[test]
fn an_old_format_record_is_ignored() {
    let texts = sample_texts(&[0, 4], &[6], &[4]);
    let (_, record) = texts.validated();
    let (header, body) = record.split_once('\n').unwrap();
    let older = header.replace("format 3", "format 2");
    assert_ne!(older, header, "the edit took");
    assert!(texts.cached(&format!("{older}\n{body}"), "cc").is_none());
    // What format 2 looked like: a digest and JSON.
    let format_2 = "ds01-slices validated configuration, format 2\n{\"digest\":\"0\",\"main\":{},\"overrides\":null}\n";
    assert!(texts.cached(format_2, "cc").is_none());
}

#[test]
fn the_record_holds_answers_not_yaml() {
    let mut texts = sample_texts(&[0], &[6, 2], &[5]);
    texts.main.push_str("container_types:\n  1: {gpu: .nan}\n");
    let (_, record) = texts.validated();
    assert!(record.starts_with("ds01-slices validated-config format 3 md5 "));
    assert!(!record.contains("container_types") && !record.contains("max_cpus"));
    assert!(
        record.contains("\nmembers\tstudent\t") && record.contains("\nmembers\tadmin\tabsent\n")
    );
    assert!(record.contains("\nm\ta.b@x\ta_b\tresearcher\t"), "{record}");
    // `cc@y` is in no members file: the default group's, with its override.
    assert!(record.contains("\no\tcc@y\tcc\tns\t"), "{record}");
    assert!(
        record.contains("\np\t0\tCPUQuotaPerSecUSec=96000000,MemoryMax="),
        "{record}"
    );
    let bob = texts.cached(&record, "cc@y").unwrap();
    assert_eq!(
        (bob.slice.as_str(), bob.listed),
        ("ds01-student-cc.slice", false)
    );
    // Before, JSON could not hold a NaN: there was no record. Now there is nothing to hold.
    assert!(texts.main.contains(".nan"));
}

#[test]
fn unlisted_users_without_a_default_group_are_validated_in_full() {
    let mut texts = sample_texts(&[0], &[6], &[]);
    texts.main = texts.main.replace("default_group: student\n", "");
    let (config, record) = texts.validated();
    assert!(texts.cached(&record, "a.b").is_some());
    assert!(texts.cached(&record, "a.b@elsewhere").is_some());
    assert!(texts.cached(&record, "zoe").is_none());
    assert!(matches!(
        config.resolve(&UserName::new("zoe").unwrap()),
        Err(ResolveError::NoGroup(_))
    ));
}

/// Every name of the sanitization vectors that is a user name at all, listed in a group of
/// its own (collisions are warnings across groups), then asked for with a stranger's domain.
#[test]
fn odd_user_names_come_back_from_the_record_as_validated() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/data/username-vectors.json")).unwrap();
    let names: Vec<String> = vectors["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["input"].as_str().unwrap().to_owned())
        .filter(|n| UserName::new(n).is_ok_and(|u| u.sanitized().is_ok()))
        .collect();
    assert!(names.len() > 15, "{names:?}");
    let mut main = String::from(
        "default_group: student\ngroups:\n  student:\n    aggregate: {tasks_max: 7}\n",
    );
    let mut members: Vec<(String, String)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(main, "  g{i}:\n    aggregate: {{tasks_max: {}}}", 100 + i);
        members.push((format!("g{i}"), format!("{name}\n")));
    }
    let overrides: String = names
        .iter()
        .take(3)
        .map(|n| {
            format!(
                "{:?}:\n  aggregate: {{tasks_max: 5}}\n",
                format!("{n}@override")
            )
        })
        .collect();
    let members: Vec<(&str, &str)> = members
        .iter()
        .map(|(g, t)| (g.as_str(), t.as_str()))
        .collect();
    let sources = Sources::from_texts(Path::new(SAMPLE_PATH), &main, &members, Some(&overrides));
    let digests = sources.digests();
    let config = sources.validate().unwrap();
    let record = cache::encode(&config, &digests).unwrap();
    for name in &names {
        for asked in [
            name.clone(),
            format!("{name}@elsewhere"),
            format!("{name}@override"),
            format!("x{name}"),
        ] {
            assert_cached_as_validated(&config, &record, &digests, &asked).unwrap();
        }
    }
}

/// Overrides that validation refuses (one name twice, two names sanitized alike): the
/// record still follows the maps [`Config::resolve`] uses, so that it does not depend on
/// validation refusing them.
#[test]
fn the_record_follows_resolve_where_validation_would_refuse() {
    let at = Location::new(Path::new(SAMPLE_PATH), Some(1));
    let tasks = |n| Aggregate {
        tasks_max: Some(crate::model::values::TasksLimit::Count(n)),
        ..Aggregate::default()
    };
    let over = |user: &str, n| UserOverride {
        user: UserName::new(user).unwrap(),
        aggregate: Some(OverrideAggregate::Merge(tasks(n))),
        location: at.clone(),
    };
    let student = GroupName::new("student").unwrap();
    let config = Config::new(
        PathBuf::from(SAMPLE_PATH),
        true,
        Some(student.clone()),
        vec![Group {
            name: student,
            aggregate: Some(tasks(1)),
            members_file: PathBuf::from("/c/groups/student.members"),
            location: at.clone(),
        }],
        Vec::new(),
        vec![
            over("a.b", 10),
            over("a_b", 20),
            over("a.b", 30),
            over("A.B", 40),
        ],
    );
    let digests = sample_sources(&[], &[], &[]).digests();
    let record = cache::encode(&config, &digests).unwrap();
    for user in ["a.b", "a_b", "a.b@x", "A.B", "A.B@x", "a", "@x"] {
        assert_cached_as_validated(&config, &record, &digests, user).unwrap();
    }
    let tasks_of = |user| {
        let target = cache::lookup(&record, &digests, &UserName::new(user).unwrap()).unwrap();
        target
            .properties
            .get(crate::model::property::Property::TasksMax)
    };
    let u64 = crate::model::property::BusValue::U64;
    assert_eq!(
        [
            tasks_of("a.b"),
            tasks_of("a_b"),
            tasks_of("a.b@x"),
            tasks_of("a")
        ],
        [Some(u64(30)), Some(u64(20)), Some(u64(10)), Some(u64(1))]
    );
}

#[test]
fn a_hook_reads_only_the_files_its_record_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resource-limits.yaml");
    let texts = sample_texts(&[0, 4], &[6], &[4]);
    std::fs::create_dir(dir.path().join(GROUPS_DIR)).unwrap();
    std::fs::write(&path, &texts.main).unwrap();
    std::fs::write(
        dir.path().join("groups/student.members"),
        &texts.members[0].1,
    )
    .unwrap();
    let user = UserName::new("d-e").unwrap();
    let (target, record) = for_hook(&path, None, &user).unwrap();
    assert_eq!(target.slice.as_str(), "ds01-student-d_e.slice");
    let record = record.expect("a full validation leaves a record");
    let (again, none) = for_hook(&path, Some(&record), &user).unwrap();
    assert_eq!((&again, none), (&target, None));
    // The researchers' file was absent: creating it is a change.
    std::fs::write(
        dir.path().join("groups/researcher.members"),
        &texts.members[1].1,
    )
    .unwrap();
    let (moved, newer) = for_hook(&path, Some(&record), &user).unwrap();
    assert_eq!(moved.slice.as_str(), "ds01-researcher-d_e.slice");
    assert!(newer.is_some_and(|r| r != record));
    // Unreadable as a file: no digest, so a full validation, which says why.
    std::fs::write(dir.path().join(OVERRIDES_FILE), "\"d-e\": [").unwrap();
    assert!(matches!(
        for_hook(&path, Some(&record), &user),
        Err(ConfigError::Invalid(_))
    ));
}

#[test]
fn the_digest_changes_with_every_file() {
    let base = sample_sources(&[0, 4], &[6], &[4]).digests();
    assert_eq!(base, sample_sources(&[0, 4], &[6], &[4]).digests());
    for other in [
        sample_sources(&[0], &[6], &[4]),
        sample_sources(&[0, 4], &[6, 1], &[4]),
        sample_sources(&[0, 4], &[6], &[]),
        sample_sources(&[4, 0], &[6], &[4]),
    ] {
        assert_ne!(other.digests(), base);
    }
}
