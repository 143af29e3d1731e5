//! Drift checks between the deployment files and the code. Terraform (`infra/terraform`),
//! `docker-compose.yml` with `deploy/compose/hookline.toml`, and the `Dockerfile` restate
//! names, defaults and commands the code owns; each test parses the files (no cloud, no
//! Docker) and fails, naming the file and the key, when one side changed without the other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use hcl::{Block, Body, Expression, ObjectKey};
use hookline_shared::config::{
    ArchiveBackend, ConfigError, ENV_PREFIX, QueueBackend, Settings, WarehouseBackend,
};
use hookline_shared::schema::FIELDS;
use serde_yaml_ng::Value as Yaml;

const TF_DIR: &str = "infra/terraform";
const COMPOSE: &str = "docker-compose.yml";
const COMPOSE_CONFIG: &str = "deploy/compose/hookline.toml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

// ------------------------------------------------------------------------------ Terraform --

/// Every `infra/terraform/*.tf` file, parsed, with its file name.
struct Terraform {
    files: Vec<(String, Body)>,
}

impl Terraform {
    fn load() -> Self {
        let mut files: Vec<(String, Body)> = std::fs::read_dir(repo().join(TF_DIR))
            .unwrap_or_else(|e| panic!("cannot list {TF_DIR}: {e}"))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "tf"))
            .map(|path| {
                let name = path.file_name().expect("a file name");
                let name = name.to_string_lossy().into_owned();
                let text = std::fs::read_to_string(path)
                    .unwrap_or_else(|e| panic!("cannot read {TF_DIR}/{name}: {e}"));
                let body = hcl::parse(&text)
                    .unwrap_or_else(|e| panic!("{TF_DIR}/{name} is not valid HCL: {e}"));
                (name, body)
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Self { files }
    }

    fn file(&self, name: &str) -> &Body {
        self.files
            .iter()
            .find(|(file, _)| file == name)
            .map(|(_, body)| body)
            .unwrap_or_else(|| panic!("{TF_DIR}/{name} is missing"))
    }

    /// Top-level blocks of one kind (`variable`, `resource`, `locals`), with their file.
    fn blocks<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Block)> + 'a {
        self.files.iter().flat_map(move |(file, body)| {
            body.blocks()
                .filter(move |block| block.identifier() == kind)
                .map(move |block| (file.as_str(), block))
        })
    }

    /// `resource "<kind>" "..."` blocks.
    fn resources<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Block)> + 'a {
        self.blocks("resource")
            .filter(move |(_, block)| block.labels().first().map(|l| l.as_str()) == Some(kind))
    }

    /// The `default` of `variable "<name>"`.
    fn variable_default(&self, name: &str) -> Option<(&str, &Expression)> {
        self.blocks("variable")
            .filter(|(_, block)| block.labels().first().map(|l| l.as_str()) == Some(name))
            .find_map(|(file, block)| Some((file, attribute(block.body(), "default")?)))
    }

    /// `local.<name>`.
    fn local(&self, name: &str) -> Option<(&str, &Expression)> {
        self.blocks("locals")
            .find_map(|(file, block)| Some((file, attribute(block.body(), name)?)))
    }
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|attr| attr.key() == key)
        .map(hcl::Attribute::expr)
}

/// The first nested block reached through `path` (`["template", "containers"]`).
fn nested<'a>(body: &'a Body, path: &[&str]) -> Option<&'a Body> {
    path.iter().try_fold(body, |body, kind| {
        body.blocks()
            .find(|block| block.identifier() == *kind)
            .map(Block::body)
    })
}

/// A literal's value as an environment variable would carry it.
fn literal(expr: &Expression) -> Option<String> {
    match expr {
        Expression::String(s) => Some(s.clone()),
        Expression::Number(n) => Some(n.to_string()),
        Expression::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string's text, a template's with its `${...}` left in.
fn string_text(expr: &Expression) -> Option<String> {
    match expr {
        Expression::String(s) => Some(s.clone()),
        Expression::TemplateExpr(template) => Some(template.to_string()),
        _ => None,
    }
}

fn key_text(key: &ObjectKey) -> Option<String> {
    match key {
        ObjectKey::Identifier(ident) => Some(ident.as_str().to_owned()),
        ObjectKey::Expression(expr) => string_text(expr),
        _ => None,
    }
}

fn string_list(expr: Option<&Expression>) -> Vec<String> {
    match expr {
        Some(Expression::Array(items)) => items.iter().filter_map(literal).collect(),
        _ => Vec::new(),
    }
}

/// A `${path.module}/...` path as a path in this checkout.
fn module_path(text: &str) -> PathBuf {
    let dir = repo().join(TF_DIR);
    PathBuf::from(text.replace("${path.module}", &dir.to_string_lossy()))
}

/// `HOOKLINE_...` environment variables set in a body, with their value expressions: keys
/// of object constructors (the env maps in `locals`) and `env { name = ... value = ... }`.
fn collect_env(body: &Body, found: &mut Vec<(String, Expression)>) {
    for attr in body.attributes() {
        collect_env_in(attr.expr(), found);
    }
    for block in body.blocks() {
        let name = attribute(block.body(), "name").and_then(string_text);
        let value = attribute(block.body(), "value");
        if block.identifier() == "env"
            && let (Some(name), Some(value)) = (name, value)
            && name.starts_with("HOOKLINE")
        {
            found.push((name, value.clone()));
        }
        collect_env(block.body(), found);
    }
}

fn collect_env_in(expr: &Expression, found: &mut Vec<(String, Expression)>) {
    match expr {
        Expression::Object(object) => {
            for (key, value) in object {
                if let Some(name) = key_text(key)
                    && name.starts_with("HOOKLINE")
                {
                    found.push((name, value.clone()));
                }
                collect_env_in(value, found);
            }
        }
        Expression::Array(items) => items.iter().for_each(|e| collect_env_in(e, found)),
        Expression::FuncCall(call) => call.args.iter().for_each(|e| collect_env_in(e, found)),
        Expression::Conditional(cond) => {
            collect_env_in(&cond.true_expr, found);
            collect_env_in(&cond.false_expr, found);
        }
        Expression::ForExpr(each) => collect_env_in(&each.value_expr, found),
        Expression::Parenthesis(inner) => collect_env_in(inner, found),
        _ => {}
    }
}

/// `HOOKLINE__SOURCES__${upper(name)}__PROVIDER` becomes `HOOKLINE__SOURCES__SAMPLE__PROVIDER`.
fn fill_interpolations(name: &str) -> String {
    let mut out = String::new();
    let mut rest = name;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        out.push_str("SAMPLE");
        let after = &rest[start..];
        rest = match after.find('}') {
            Some(end) => &after[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// A value for the variable `name` that the settings accept: the literal in run.tf, else
/// the default of the `var.X` it names, else a sample of the key's type.
fn env_value(tf: &Terraform, name: &str, value: &Expression) -> String {
    if let Some(v) = literal(value) {
        return v;
    }
    let text = value.to_string();
    if let Some(var) = text.strip_prefix("var.")
        && let Some(v) = tf.variable_default(var).and_then(|(_, d)| literal(d))
    {
        return v;
    }
    // Expressions of resources and locals: a value of the right type per key. A key missing
    // here gets a string; if it is a number or a list, add it.
    let sample = match name.rsplit("__").next().unwrap_or_default() {
        "PROVIDER" => "github",
        "SECRETS_ENV" => r#"["SAMPLE_WEBHOOK_SECRET"]"#,
        "HEADER" => "X-Webhook-Token",
        "AUDIENCE" => "https://hookline-worker-123456789012.us-central1.run.app",
        "SERVICE_ACCOUNT_EMAIL" => "hookline-pubsub-push@sample.iam.gserviceaccount.com",
        _ => "sample-name",
    };
    sample.to_owned()
}

#[test]
fn terraform_variable_defaults_are_the_code_defaults() {
    let tf = Terraform::load();
    let d = Settings::default();
    let q = &d.queue.pubsub;
    let w = &d.warehouse.bigquery;
    let expected = [
        ("pubsub_topic", "queue.pubsub.topic", q.topic.clone()),
        (
            "pubsub_subscription",
            "queue.pubsub.subscription",
            q.subscription.clone(),
        ),
        (
            "pubsub_dead_letter_topic",
            "queue.pubsub.dead_letter_topic",
            q.dead_letter_topic.clone(),
        ),
        (
            "pubsub_dead_letter_subscription",
            "queue.pubsub.dead_letter_subscription",
            q.dead_letter_subscription.clone(),
        ),
        (
            "ack_deadline_secs",
            "queue.pubsub.ack_deadline_secs",
            q.ack_deadline_secs.to_string(),
        ),
        (
            "max_delivery_attempts",
            "queue.pubsub.max_delivery_attempts",
            q.max_delivery_attempts.to_string(),
        ),
        (
            "retry_policy",
            "queue.pubsub.retry_policy",
            q.retry_policy.to_string(),
        ),
        (
            "min_backoff_secs",
            "queue.pubsub.min_backoff_secs",
            q.min_backoff_secs.to_string(),
        ),
        (
            "max_backoff_secs",
            "queue.pubsub.max_backoff_secs",
            q.max_backoff_secs.to_string(),
        ),
        (
            "bigquery_dataset",
            "warehouse.bigquery.dataset",
            w.dataset.clone(),
        ),
        (
            "bigquery_table",
            "warehouse.bigquery.table",
            w.table.clone(),
        ),
        (
            "bigquery_location",
            "warehouse.bigquery.location",
            w.location.clone(),
        ),
        (
            "worker_concurrency",
            "worker.concurrency",
            d.worker.concurrency.to_string(),
        ),
        (
            "slack_webhook_url_env",
            "slack.webhook_url_env",
            d.slack.webhook_url_env.clone(),
        ),
    ];
    for (variable, key, want) in expected {
        let (file, default) = tf.variable_default(variable).unwrap_or_else(|| {
            panic!("{TF_DIR}: variable \"{variable}\" with a default (the code's {key}) is missing")
        });
        let got = literal(default).unwrap_or_else(|| {
            panic!(
                "{TF_DIR}/{file}: variable \"{variable}\" default must be a literal, is {default}"
            )
        });
        assert_eq!(
            got, want,
            "{TF_DIR}/{file}: variable \"{variable}\" default differs from the code's {key}"
        );
    }
}

#[test]
fn terraform_table_reads_the_schema_file_and_partitions_on_ts() {
    let tf = Terraform::load();
    let tables: Vec<(&str, &Block)> = tf
        .resources("google_bigquery_table")
        .filter(|(_, block)| attribute(block.body(), "schema").is_some())
        .collect();
    assert_eq!(
        tables.len(),
        1,
        "{TF_DIR}: expected one google_bigquery_table with a schema (the events table)"
    );
    let (file, table) = tables[0];
    let schema = attribute(table.body(), "schema").expect("filtered on schema");
    let text = schema.to_string();
    let path = text
        .strip_prefix("file(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .unwrap_or_else(|| {
            panic!("{TF_DIR}/{file}: the events table's schema must be file(\"...\") of infra/bigquery/events.schema.json, never a copy; it is {text}")
        });
    let got = module_path(path).canonicalize();
    let want = repo()
        .join("infra/bigquery/events.schema.json")
        .canonicalize();
    assert!(
        matches!((&got, &want), (Ok(a), Ok(b)) if a == b),
        "{TF_DIR}/{file}: schema reads {path}, not infra/bigquery/events.schema.json"
    );

    let partitioning = nested(table.body(), &["time_partitioning"])
        .unwrap_or_else(|| panic!("{TF_DIR}/{file}: the events table needs time_partitioning"));
    let kind = attribute(partitioning, "type").and_then(literal);
    assert_eq!(
        kind.as_deref(),
        Some("DAY"),
        "{TF_DIR}/{file}: time_partitioning.type"
    );
    let field = attribute(partitioning, "field").and_then(literal);
    // `hookline provision` partitions on ts (worker/src/sinks/warehouse_bigquery.rs).
    assert_eq!(
        field.as_deref(),
        Some("ts"),
        "{TF_DIR}/{file}: time_partitioning.field"
    );
    let ts = FIELDS.iter().find(|f| f.name == "ts");
    assert!(
        ts.is_some_and(|f| f.kind == "TIMESTAMP" && f.mode == "REQUIRED"),
        "infra/bigquery/events.schema.json: ts must be a REQUIRED TIMESTAMP to partition {TF_DIR}/{file} on"
    );
}

#[test]
fn terraform_views_are_the_sql_files() {
    let tf = Terraform::load();
    let (file, view_files) = tf.local("view_files").unwrap_or_else(|| {
        panic!("{TF_DIR}: local.view_files (view name => .sql file) is missing")
    });
    let Expression::Object(view_files) = view_files else {
        panic!("{TF_DIR}/{file}: local.view_files must be an object literal");
    };
    let mut names = Vec::new();
    for (key, value) in view_files {
        let name = key_text(key).unwrap_or_else(|| panic!("{TF_DIR}/{file}: view name {key}"));
        let path = string_text(value)
            .unwrap_or_else(|| panic!("{TF_DIR}/{file}: local.view_files.{name} must be a path"));
        let sql = std::fs::read_to_string(module_path(&path))
            .unwrap_or_else(|e| panic!("{TF_DIR}/{file}: local.view_files.{name} = {path}: {e}"));
        let head = format!("CREATE OR REPLACE VIEW `${{project}}.${{dataset}}.{name}` AS");
        assert!(
            sql.contains(&head),
            "{path} (local.view_files.{name} in {TF_DIR}/{file}) must contain `{head}`"
        );
        names.push(name);
    }
    let mut sql_files: Vec<String> = std::fs::read_dir(repo().join("infra/sql/bigquery"))
        .expect("infra/sql/bigquery is listable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .filter_map(|path| Some(path.file_stem()?.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    sql_files.sort();
    assert_eq!(
        names, sql_files,
        "{TF_DIR}/{file}: local.view_files must list every view of infra/sql/bigquery/"
    );

    let views = tf
        .resources("google_bigquery_table")
        .find(|(_, block)| nested(block.body(), &["view"]).is_some());
    let for_each = views.and_then(|(_, block)| attribute(block.body(), "for_each"));
    assert_eq!(
        for_each.map(ToString::to_string).as_deref(),
        Some("local.views"),
        "{TF_DIR}: the google_bigquery_table views must be for_each = local.views (the .sql files)"
    );
}

#[test]
fn terraform_env_vars_are_settings_keys() {
    let tf = Terraform::load();
    let mut found = Vec::new();
    collect_env(tf.file("run.tf"), &mut found);
    let env: Vec<(String, String)> = found
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .map(|(name, value)| (fill_interpolations(name), env_value(&tf, name, value)))
        .collect();
    let names: Vec<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
    for required in [
        "HOOKLINE__QUEUE__BACKEND",
        "HOOKLINE__QUEUE__PUBSUB__TOPIC",
        "HOOKLINE__QUEUE__PUBSUB__SUBSCRIPTION",
        "HOOKLINE__QUEUE__PUBSUB__DEAD_LETTER_TOPIC",
        "HOOKLINE__QUEUE__PUBSUB__DEAD_LETTER_SUBSCRIPTION",
        "HOOKLINE__ARCHIVE__BACKEND",
        "HOOKLINE__ARCHIVE__GCS__BUCKET",
        "HOOKLINE__WAREHOUSE__BACKEND",
        "HOOKLINE__WAREHOUSE__BIGQUERY__DATASET",
        "HOOKLINE__WAREHOUSE__BIGQUERY__TABLE",
        "HOOKLINE__SOURCES__SAMPLE__PROVIDER",
        "HOOKLINE__SOURCES__SAMPLE__SECRETS_ENV",
        "HOOKLINE__WORKER__MODE",
        "HOOKLINE__WORKER__PUSH__AUDIENCE",
        "HOOKLINE__WORKER__PUSH__SERVICE_ACCOUNT_EMAIL",
    ] {
        assert!(
            names.contains(&required),
            "{TF_DIR}/run.tf: {required} is not set on the services (found {names:?})"
        );
    }

    // One at a time (with a provider, which a source needs): the settings deny unknown
    // fields, so a renamed or misspelt key is a parse error.
    let source = (
        "HOOKLINE__SOURCES__SAMPLE__PROVIDER".to_owned(),
        "github".to_owned(),
    );
    for (name, value) in &env {
        let one = [source.clone(), (name.clone(), value.clone())];
        let result = Settings::from_parts("", one);
        assert!(
            !matches!(
                result,
                Err(ConfigError::Parse(_) | ConfigError::Override { .. })
            ),
            "{TF_DIR}/run.tf: {name}={value} is not a settings key of that type: {result:?}"
        );
    }

    // All together, as a service sees them: valid, on the Google Cloud engines.
    let mut all = env;
    all.push((
        "GOOGLE_CLOUD_PROJECT".to_owned(),
        "sample-project".to_owned(),
    ));
    let settings = Settings::from_parts("", all)
        .unwrap_or_else(|e| panic!("{TF_DIR}/run.tf: the services' environment is refused: {e:?}"));
    assert_eq!(
        settings.queue.backend,
        QueueBackend::Pubsub,
        "{TF_DIR}/run.tf: HOOKLINE__QUEUE__BACKEND"
    );
    assert_eq!(
        settings.archive.backend,
        ArchiveBackend::Gcs,
        "{TF_DIR}/run.tf: HOOKLINE__ARCHIVE__BACKEND"
    );
    assert_eq!(
        settings.warehouse.backend,
        WarehouseBackend::Bigquery,
        "{TF_DIR}/run.tf: HOOKLINE__WAREHOUSE__BACKEND"
    );
}

// -------------------------------------------------------------------------------- compose --

fn compose() -> Yaml {
    let mut compose: Yaml = serde_yaml_ng::from_str(&read(COMPOSE))
        .unwrap_or_else(|e| panic!("{COMPOSE} is not valid YAML: {e}"));
    compose
        .apply_merge()
        .unwrap_or_else(|e| panic!("{COMPOSE}: a `<<` merge key is malformed: {e}"));
    compose
}

fn service_env(compose: &Yaml, service: &str) -> BTreeMap<String, String> {
    let env = compose["services"][service]["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{COMPOSE}: services.{service}.environment must be a mapping"));
    env.iter()
        .map(|(key, value)| {
            let key = key
                .as_str()
                .expect("environment names are strings")
                .to_owned();
            let value = match value {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                Yaml::Bool(b) => b.to_string(),
                _ => panic!("{COMPOSE}: services.{service}.environment.{key} is not a scalar"),
            };
            (key, value)
        })
        .collect()
}

fn strings(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Yaml::Sequence(items) => items
            .iter()
            .filter_map(Yaml::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn compose_runs_the_stack_on_the_emulators() {
    let compose = compose();
    for service in ["pubsub", "gcs", "bigquery", "provision", "ingest", "worker"] {
        assert!(
            compose["services"][service].is_mapping(),
            "{COMPOSE}: service {service} is missing"
        );
    }

    let port = Settings::default().server.port;
    let ports = strings(&compose["services"]["ingest"]["ports"]);
    let published = format!("{port}:{port}");
    assert!(
        ports.iter().any(|p| p.ends_with(&published)),
        "{COMPOSE}: services.ingest.ports must publish {published} (server.port), has {ports:?}"
    );

    let expected = [
        ("GOOGLE_CLOUD_PROJECT", "hookline-local"),
        ("PUBSUB_EMULATOR_HOST", "pubsub:8085"),
        ("STORAGE_EMULATOR_HOST", "http://gcs:4443"),
        ("BIGQUERY_EMULATOR_HOST", "http://bigquery:9050"),
        ("HOOKLINE_CONFIG", "/etc/hookline/hookline.toml"),
    ];
    let toml = read(COMPOSE_CONFIG);
    for service in ["provision", "ingest", "worker"] {
        let env = service_env(&compose, service);
        for (key, want) in expected {
            assert_eq!(
                env.get(key).map(String::as_str),
                Some(want),
                "{COMPOSE}: services.{service}.environment.{key}"
            );
        }
        let mount = format!("./{COMPOSE_CONFIG}:/etc/hookline/hookline.toml:ro");
        let volumes = strings(&compose["services"][service]["volumes"]);
        assert!(
            volumes.contains(&mount),
            "{COMPOSE}: services.{service}.volumes must mount {mount} (HOOKLINE_CONFIG), has {volumes:?}"
        );

        let settings = Settings::from_parts(&toml, env.clone()).unwrap_or_else(|e| {
            panic!("{COMPOSE_CONFIG} with the environment of {COMPOSE} services.{service} is refused: {e:?}")
        });
        assert_eq!(
            settings.queue.backend,
            QueueBackend::Pubsub,
            "{COMPOSE_CONFIG}: queue.backend"
        );
        assert_eq!(
            settings.archive.backend,
            ArchiveBackend::Gcs,
            "{COMPOSE_CONFIG}: archive.backend"
        );
        assert_eq!(
            settings.warehouse.backend,
            WarehouseBackend::Bigquery,
            "{COMPOSE_CONFIG}: warehouse.backend"
        );
        assert_eq!(
            settings.archive.gcs.bucket, "hookline-archive",
            "{COMPOSE_CONFIG}: archive.gcs.bucket"
        );
        assert_eq!(
            settings.gcp.project, "hookline-local",
            "{COMPOSE}: services.{service}: gcp.project"
        );
        let endpoints = [
            (
                "queue.pubsub.endpoint",
                &settings.queue.pubsub.endpoint,
                "http://pubsub:8085",
            ),
            (
                "archive.gcs.endpoint",
                &settings.archive.gcs.endpoint,
                "http://gcs:4443",
            ),
            (
                "warehouse.bigquery.endpoint",
                &settings.warehouse.bigquery.endpoint,
                "http://bigquery:9050",
            ),
        ];
        for (key, got, want) in endpoints {
            assert_eq!(
                got.as_deref(),
                Some(want),
                "{COMPOSE}: services.{service}: {key}"
            );
        }
        if service == "ingest" {
            let sources = settings
                .resolve_sources(|var| env.get(var).cloned())
                .unwrap_or_else(|e| {
                    panic!("{COMPOSE}: services.ingest.environment lacks a secret {COMPOSE_CONFIG} names: {e}")
                });
            assert!(
                sources.contains_key("github"),
                "{COMPOSE_CONFIG}: sources.github"
            );
        }
    }

    for service in ["ingest", "worker"] {
        let condition = &compose["services"][service]["depends_on"]["provision"]["condition"];
        assert_eq!(
            condition.as_str(),
            Some("service_completed_successfully"),
            "{COMPOSE}: services.{service}.depends_on.provision.condition"
        );
    }

    // The emulators listen where the hookline services look for them.
    let pubsub = strings(&compose["services"]["pubsub"]["command"]).join(" ");
    let gcs = strings(&compose["services"]["gcs"]["command"]).join(" ");
    let bigquery = strings(&compose["services"]["bigquery"]["command"]).join(" ");
    let listens = [
        ("pubsub", &pubsub, "--project=hookline-local"),
        ("pubsub", &pubsub, "--host-port=0.0.0.0:8085"),
        ("gcs", &gcs, "-port 4443"),
        ("bigquery", &bigquery, "--project=hookline-local"),
        ("bigquery", &bigquery, "--port=9050"),
    ];
    for (service, command, want) in listens {
        assert!(
            command.contains(want),
            "{COMPOSE}: services.{service}.command must contain {want} (the hookline services' environment), is {command:?}"
        );
    }
}

// ----------------------------------------------------------------------------- Dockerfile --

/// The Dockerfile's instructions, comments dropped.
fn dockerfile() -> Vec<String> {
    read("Dockerfile")
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let lines = dockerfile();
    let builds: Vec<&String> = lines.iter().filter(|l| l.contains("cargo build")).collect();
    assert!(!builds.is_empty(), "Dockerfile: no `cargo build`");
    for build in builds {
        assert!(
            build.contains("--locked"),
            "Dockerfile: `{build}` must pass --locked (build Cargo.lock's versions)"
        );
    }

    let last_from = lines.iter().rposition(|l| l.starts_with("FROM "));
    let last_user = lines.iter().rposition(|l| l.starts_with("USER "));
    assert!(
        matches!((last_from, last_user), (Some(from), Some(user)) if user > from),
        "Dockerfile: the runtime stage needs a USER instruction"
    );
    let user = last_user
        .and_then(|i| lines[i].strip_prefix("USER "))
        .unwrap_or_default()
        .trim();
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !["root", "0", ""].contains(&name),
        "Dockerfile: USER {user} runs as root; use an unprivileged user"
    );

    assert!(
        lines.iter().any(|l| l == r#"ENTRYPOINT ["hookline"]"#),
        "Dockerfile: ENTRYPOINT [\"hookline\"] is missing"
    );
    assert!(
        lines.iter().any(|l| l.contains("/usr/local/bin/hookline")),
        "Dockerfile: the binary belongs at /usr/local/bin/hookline"
    );
}

// ---------------------------------------------------------------------------- the binary --

/// `--log-format <format> <subcommand> --help` succeeds: clap checks the format's value as
/// it parses it, before `--help` ends the parse.
fn assert_runs(origin: &str, log_format: &str, subcommand: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(["--log-format", log_format, subcommand, "--help"])
        .env_remove("HOOKLINE_CONFIG")
        .env_remove("HOOKLINE_LOG_FORMAT")
        .output()
        .expect("the hookline binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{origin}: `hookline --log-format {log_format} {subcommand}` is not a valid command line: {stderr}"
    );
}

#[test]
fn deployment_files_use_existing_subcommands_and_log_formats() {
    // Dockerfile: the default CMD and the log format the image sets.
    let lines = dockerfile();
    let cmd = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("CMD "))
        .and_then(|args| serde_json::from_str::<Vec<String>>(args).ok())
        .unwrap_or_default();
    let format = lines
        .iter()
        .filter(|l| l.starts_with("ENV "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|word| word.strip_prefix("HOOKLINE_LOG_FORMAT="))
        .expect("Dockerfile: ENV HOOKLINE_LOG_FORMAT=... is missing");
    assert_eq!(cmd, ["ingest"], "Dockerfile: CMD");
    assert_runs("Dockerfile", format, &cmd[0]);

    // docker-compose.yml: each hookline service's command with its log format.
    let compose = compose();
    for service in ["provision", "ingest", "worker"] {
        let command = strings(&compose["services"][service]["command"]);
        assert_eq!(command, [service], "{COMPOSE}: services.{service}.command");
        let env = service_env(&compose, service);
        let format = env
            .get("HOOKLINE_LOG_FORMAT")
            .map_or("pretty", String::as_str);
        assert_runs(&format!("{COMPOSE} services.{service}"), format, service);
    }

    // Terraform: the Cloud Run services' container args, with run.tf's log format.
    let tf = Terraform::load();
    let mut found = Vec::new();
    collect_env(tf.file("run.tf"), &mut found);
    let format = found
        .iter()
        .find(|(name, _)| name == "HOOKLINE_LOG_FORMAT")
        .and_then(|(_, value)| literal(value))
        .unwrap_or_else(|| panic!("{TF_DIR}/run.tf: HOOKLINE_LOG_FORMAT is not set to a literal"));
    let mut args: Vec<String> = tf
        .resources("google_cloud_run_v2_service")
        .flat_map(|(_, service)| {
            let container = nested(service.body(), &["template", "containers"]);
            string_list(container.and_then(|c| attribute(c, "args")))
        })
        .collect();
    args.sort();
    assert_eq!(
        args,
        ["ingest", "worker"],
        "{TF_DIR}: the Cloud Run services' container args"
    );
    for subcommand in &args {
        assert_runs(&format!("{TF_DIR}/run.tf"), &format, subcommand);
    }
}
