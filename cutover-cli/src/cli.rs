//! The command line, defined once: help and errors come from here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const EXIT_CODES: &str = "Exit codes:
  0  success (check: no problem; db verify: equal; apply: done, or stopped where asked)
  1  failure, or blocking problems found (check), or the databases differ (db verify)
  2  check: warnings only
  3  apply, finish: stopped before a step that needs a person's yes (run it on a terminal, or with --yes)
  64 the command line is wrong
  130 interrupted (Ctrl-C)";

#[derive(Parser, Debug)]
#[command(
    name = "cutover",
    version,
    about = "Move a PostgreSQL-backed app between platforms with zero downtime and zero lost writes",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The plan file.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_PLAN",
        default_value = "cutover.toml"
    )]
    pub plan: PathBuf,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No step lines and no progress on stderr: only warnings, errors and the result.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// How log lines on stderr are written: text, or one JSON object per line (passwords are
    /// removed from both).
    #[arg(
        long,
        global = true,
        env = "CUTOVER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// The format of log lines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a commented plan file (cutover.toml).
    Init(InitArgs),
    /// Check both databases and report every problem at once, each with its fix.
    Check,
    /// Show the whole migration the plan file makes: its phases and steps, what each changes
    /// and how a rollback undoes it, and what the plan lacks. -o saves it for `apply`.
    Plan(PlanArgs),
    /// Run the migration, or go on with it: prepare, new app, proxy, database and traffic,
    /// done, hold, finish. Asks before each step that changes production; run again after
    /// any stop or crash, it goes on where it was.
    Apply(ApplyArgs),
    /// Where the migration is (phase, step, lag, proxy, traffic, rollback window), then the
    /// journal: every run and step, as a timeline.
    Status,
    /// Users and writes back on the old platform, from any phase, losing nothing written on
    /// the new one. Stops a running `apply` first.
    Rollback(RollbackArgs),
    /// After the rollback window: cut the replication, clean up both sides, and write the
    /// decommission checklist.
    Finish(FinishArgs),
    /// Database commands: sync, status, verify, cleanup.
    #[command(subcommand)]
    Db(DbCommand),
    /// Run the PG proxy applications connect through (point DATABASE_URL at it).
    Proxy(ProxyArgs),
    /// Run the whole move of a small shop between two local platforms this command starts
    /// itself: apps, proxy, splitter, HTTP load, every phase of the migration.
    Demo(DemoArgs),
    /// The DNS record that moves users: lower-ttl, verify, switch.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// The weighted HTTP splitter and the canary: serve, canary, status, promote, abort,
    /// pause, resume.
    #[command(subcommand)]
    Traffic(TrafficCommand),
    /// The app itself: inspect a Heroku app, write a Dockerfile or project.toml, export its
    /// environment, generate Terraform (ECS) or Vercel config. Needs no plan file.
    #[command(subcommand)]
    App(AppCommand),
    /// Print a shell completion script: `source <(cutover completions bash)`, or save it where
    /// your shell loads completions from.
    Completions(CompletionsArgs),
    /// Print the manual page (roff): `cutover man | man -l -`, or save it as cutover.1.
    Man,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Save the plan (with a fingerprint of the plan file) for `cutover apply FILE`.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A plan saved by `cutover plan -o FILE`: refused if the plan file changed since.
    pub saved: Option<PathBuf>,
    /// Answer yes to every question (the database switch, moving users, cutting replication).
    #[arg(short, long)]
    pub yes: bool,
    /// Stop after this phase: prepare, new_app, proxy, database, traffic, done, hold.
    #[arg(long, value_parser = parse_phase)]
    pub until: Option<cutover_runbook::migration::Phase>,
    /// Show what would run, as `cutover plan` does; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_phase(s: &str) -> Result<cutover_runbook::migration::Phase, String> {
    cutover_runbook::migration::Phase::parse(s).ok_or_else(|| {
        "use one of prepare, new_app, proxy, database, traffic, done, hold, finish".to_string()
    })
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Do not ask; needed when stdin is not a terminal.
    #[arg(short, long)]
    pub yes: bool,
    /// Show what would be undone, in order; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct FinishArgs {
    /// Finish inside the rollback window (a rollback is impossible after it).
    #[arg(long)]
    pub force: bool,
    /// Show what finish would do, and whether the window allows it now; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask; needed when stdin is not a terminal.
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub command: Option<ProxyCommand>,
    /// Listen here instead of proxy.listen.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve the admin API here instead of proxy.admin_listen.
    #[arg(long)]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Serve /live, /ready and /metrics here instead of proxy.health_listen.
    #[arg(long)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Keep this proxy's backend in this file instead of <plan>.proxy.json (several proxies
    /// on one host each need their own).
    #[arg(long)]
    pub state: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ProxyCommand {
    /// Every proxy of the fleet: address, version, epoch, backend, sessions, last heartbeat.
    Status,
    /// Write Terraform for the fleet (an ECS service of N tasks behind a network load
    /// balancer, security groups, log group, secrets by reference) and the image to run.
    Terraform(ProxyTerraformArgs),
}

#[derive(Args, Debug)]
pub struct ProxyTerraformArgs {
    /// Directory to write main.tf, variables.tf, outputs.tf, the Dockerfile, its entrypoint
    /// and a copy of the plan into.
    #[arg(long, default_value = "infra/proxy")]
    pub out: PathBuf,
    /// Proxies in the fleet (the Terraform variable's default).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub tasks: u32,
    /// Names the resources (<name>-proxy); by default the target database's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Default AWS region of the generated variables.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    #[command(flatten)]
    pub write: AppWrite,
}

#[derive(Args, Debug)]
pub struct FollowArgs {
    /// Serve GET /health (JSON: batches, changes, retries, last error, idle time) here.
    #[arg(long)]
    pub health: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// Go on although application sessions reach the old primary without the proxy; the
    /// fence ends them.
    #[arg(long)]
    pub force: bool,
    /// Do not start replication back into the old primary. A rollback would then lose every
    /// write made after the switch.
    #[arg(long)]
    pub no_reverse: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The source database URL. Pass it from an environment variable ("$SOURCE_DATABASE_URL")
    /// and the plan refers to that variable instead of holding the password.
    #[arg(long)]
    pub source_url: String,
    /// The target database URL, likewise ("$TARGET_DATABASE_URL").
    #[arg(long)]
    pub target_url: String,
    /// Overwrite an existing plan file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Copy the schema and the data from one consistent snapshot, then keep following changes.
    Sync(SyncArgs),
    /// Show lag in bytes, retained WAL, per-table state, apply rate and ETA.
    Status(StatusArgs),
    /// Compare row counts and chunked checksums table by table.
    Verify(VerifyArgs),
    /// Remove the subscription, slots and publication cutover created, on both sides.
    Cleanup(CleanupArgs),
    /// Follow the source until stopped (SIGTERM or Ctrl-C), fit for a service manager:
    /// trigger mode applies its captured changes; both modes apply additive schema changes
    /// (new tables, columns, indexes, constraints) and hold the others.
    Follow(FollowArgs),
    /// The source's schema changes during the sync: `show` them, `apply` them after review.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Move the applications to the target through the proxy: pause, drain, fence, catch
    /// up, sequences, reverse replication, switch, resume.
    Switchover(SwitchArgs),
    /// Move them back to the source the same way, losing nothing written on the target.
    Rollback(SwitchArgs),
}

#[derive(Subcommand, Debug)]
pub enum SchemaCommand {
    /// Every difference between the source's schema and the target's, additive or held.
    Show,
    /// Apply every difference to the target, held ones included (a rename, a dropped column
    /// or table, a type change), after review. Asks first on a terminal.
    Apply(SchemaApplyArgs),
}

#[derive(Args, Debug)]
pub struct SchemaApplyArgs {
    /// Show what would be applied; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Check and show what would be done; create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Trigger mode: return after the copy instead of following (then run `cutover db follow`).
    #[arg(long)]
    pub no_follow: bool,
    /// Help a `db sync` in progress with its copy, from this host: take parts of its queue
    /// (`sync.copy_jobs` at once) until none is left. Same plan file as the sync.
    #[arg(long, conflicts_with = "dry_run")]
    pub worker: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Refresh until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Only these tables (schema.table); repeatable. Default: every table of the plan.
    #[arg(long = "table")]
    pub tables: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A source that allows logical replication.
    Native,
    /// A Heroku-like source: no logical replication, no superuser.
    Heroku,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoOrder {
    DatabaseFirst,
    TrafficFirst,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// What the source is like. "heroku": wal_level=replica and one application role that
    /// owns everything, with neither superuser nor replication; the demo then uses trigger
    /// mode and also rolls back, losing nothing.
    #[arg(long, value_enum, default_value_t = SourceKind::Native)]
    pub source_kind: SourceKind,
    /// Which moves first: database-first or traffic-first.
    #[arg(long, value_enum, default_value_t = DemoOrder::DatabaseFirst)]
    pub order: DemoOrder,
    /// Only the database move (sync, switchover, verify) under pgbench load, as before the
    /// whole move existed.
    #[arg(long)]
    pub database_only: bool,
    /// With --database-only: pgbench scale of the demo data (100,000 account rows per unit).
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    /// Load: HTTP requests per second from the shop's users (default 40), or with
    /// --database-only pgbench transactions per second during the copy (default 100).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Leave the clusters running at the end and print how to reach them (Ctrl-C stops them).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Read the app as Heroku builds it: processes, app.json, language and version, config
    /// vars by class (with --config), and Heroku-isms with file:line and the fix.
    Inspect(AppInspectArgs),
    /// Write a Dockerfile and .dockerignore (or, with --cnb, a project.toml for heroku/builder).
    Dockerize(AppDockerizeArgs),
    /// Export the environment (--config ... --to ...), or compare two sets (env diff).
    Env(AppEnvArgs),
    /// Write Terraform: ECS Fargate, an ALB, Route 53 weighted records for Heroku and ECS.
    Terraform(AppTerraformArgs),
    /// Write vercel.json and the Vercel env payload (pooled URL at runtime, direct for migrations).
    Vercel(AppVercelArgs),
}

/// Where the app and its exported config are.
#[derive(Args, Debug)]
pub struct AppSource {
    /// The app's source directory (the one holding the Procfile).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Output of `heroku config --json --app APP` (not the shell-quoted form).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output of `heroku addons --json --app APP`: which add-on owns which variable.
    #[arg(long)]
    pub addons: Option<PathBuf>,
}

/// How generated files are written.
#[derive(Args, Debug)]
pub struct AppWrite {
    /// Show what would be written, with its contents; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct AppInspectArgs {
    #[command(flatten)]
    pub source: AppSource,
}

#[derive(Args, Debug)]
pub struct AppDockerizeArgs {
    /// The app's source directory (the one holding the Procfile).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Write a Cloud Native Buildpacks project.toml for heroku/builder instead.
    #[arg(long)]
    pub cnb: bool,
    /// Directory to write into (default: the app's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub write: AppWrite,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AppEnvArgs {
    #[command(subcommand)]
    pub command: Option<AppEnvCommand>,
    /// The app's source directory, for app.json and the buildpack's runtime variables.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Output of `heroku config --json --app APP`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output of `heroku addons --json --app APP`.
    #[arg(long)]
    pub addons: Option<PathBuf>,
    /// secrets-manager, ssm, ecs, vercel or dotenv.
    #[arg(long)]
    pub to: Option<String>,
    /// File to write (default: secrets-manager.json, ssm-parameters.json,
    /// ecs-container-env.json, vercel-env.json or .env).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// ARN of the Secrets Manager secret the ECS `valueFrom` entries point into.
    #[arg(long)]
    pub secret_arn: Option<String>,
    #[command(flatten)]
    pub write: AppWrite,
}

#[derive(Subcommand, Debug)]
pub enum AppEnvCommand {
    /// Compare two sets of variables (heroku config --json, a JSON object, a {name, value}
    /// list, or a .env file). Secret values show only as hashes. Exit 0 when equal, 1 when not.
    Diff { source: PathBuf, target: PathBuf },
}

#[derive(Args, Debug)]
pub struct AppTerraformArgs {
    #[command(flatten)]
    pub source: AppSource,
    /// Directory to write main.tf, variables.tf and outputs.tf into (default: DIR/infra).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The public hostname of the weighted records (a CNAME, so not the zone apex).
    #[arg(long)]
    pub domain: Option<String>,
    /// Path the load balancer's health check requests.
    #[arg(long, default_value = "/")]
    pub health_path: String,
    /// Default AWS region of the generated variables.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    #[command(flatten)]
    pub write: AppWrite,
}

#[derive(Args, Debug)]
pub struct AppVercelArgs {
    #[command(flatten)]
    pub source: AppSource,
    /// Directory to write vercel.json and vercel-env.json into (default: the app's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of an environment variable holding the cutover proxy's URL (with the app's
    /// password): DATABASE_URL and DATABASE_URL_UNPOOLED while the move runs.
    #[arg(long)]
    pub proxy_url_env: Option<String>,
    /// Write the new database's own URLs: the move is finished (`cutover finish`).
    #[arg(long)]
    pub after_move: bool,
    /// With --after-move: name of an environment variable holding the new database's pooled
    /// URL (runtime).
    #[arg(long)]
    pub pooled_url_env: Option<String>,
    /// With --after-move: name of an environment variable holding the new database's direct
    /// URL (migrations; for Neon the pooled one is derived from it).
    #[arg(long)]
    pub direct_url_env: Option<String>,
    #[command(flatten)]
    pub write: AppWrite,
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// Lower the TTL of [dns] name to dns.low_ttl and print the earliest safe cutover time.
    LowerTtl,
    /// Ask the authoritative servers and resolvers what the name answers now.
    Verify(DnsVerifyArgs),
    /// Send a share of resolutions to the new answers (100: a one-step switch). Refused
    /// before the old TTL has run out unless --force.
    Switch(DnsSwitchArgs),
}

#[derive(Args, Debug)]
pub struct DnsVerifyArgs {
    /// Exit 1 unless every server answers this side.
    #[arg(long, value_parser = ["old", "new"])]
    pub expect: Option<String>,
}

#[derive(Args, Debug)]
pub struct DnsSwitchArgs {
    /// Percent of resolutions for the new answers (0 to 100; weights need Route 53 or
    /// Cloudflare Load Balancing).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub percent: u8,
    /// Switch before the TTL planner's safe time, stranding users who cache the old answer.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum TrafficCommand {
    /// Run the weighted HTTP splitter until SIGINT or SIGTERM (it can be the old app's web
    /// process, so clients with stale DNS still reach the new app).
    Serve(TrafficServeArgs),
    /// Move users in steps with gates; roll back to 0% by itself when a gate fails.
    Canary(TrafficCanaryArgs),
    /// Show the canary's step and the splitter's weight, health and traffic per origin, and
    /// why an origin is down.
    Status,
    /// Ask the running canary to go to 100% now (without a canary: set the splitter to 100%).
    Promote,
    /// Ask the running canary to go back to 0% and stop (without one: set the splitter to 0%).
    Abort,
    /// Ask the running canary to hold its step.
    Pause,
    /// Ask a paused canary to go on.
    Resume,
}

#[derive(Args, Debug)]
pub struct TrafficServeArgs {
    /// Listen here instead of traffic.listen.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct TrafficCanaryArgs {
    /// Print the steps and gates; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With weights_via = "dns": go before the TTL planner's safe time.
    #[arg(long)]
    pub force: bool,
}
