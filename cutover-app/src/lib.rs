//! The app half of a move off Heroku: read the app as Heroku runs it, then write what the new
//! platform needs to run it the same way.
//!
//! Heroku hides a lot behind `git push`: the buildpack picks a language and a version from
//! files in the repository, the Procfile names the processes, the release phase runs before
//! new dynos start, add-ons own config vars they may rotate at any time, and the buildpack
//! sets variables (`WEB_CONCURRENCY`, `RAILS_ENV`, ...) that nobody wrote down. A faithful
//! move makes each of these explicit, so this crate is split the same way:
//!
//! - [`inspect()`] reads the source tree ([`procfile`], [`appjson`], [`language`], [`scan`]) and
//!   the config vars ([`config`], [`mod@env`]) into one [`Inspection`];
//! - [`dockerfile`] and [`cnb`] turn it into a build, [`export`] into the target's environment
//!   format, [`terraform`] into ECS infrastructure and [`vercel`] into Vercel's config;
//! - every writer returns [`files::Artifact`]s, which [`files::write`] puts on disk only after
//!   showing them, never over an existing file without `force`, and not at all in a dry run.
//!
//! Nothing here talks to Heroku, AWS or Vercel: the inputs are files the user made with
//! `heroku config --json` and `heroku addons --json`, the outputs are files they review.
//! Invariant: a secret value never reaches output, errors or `--json`; only files written
//! for upload hold one, and their previews mask it.

pub mod appjson;
pub mod cnb;
pub mod config;
pub mod diff;
pub mod dockerfile;
pub mod env;
pub mod error;
pub mod export;
pub mod files;
pub mod hcl;
pub mod inspect;
pub mod language;
pub mod procfile;
pub mod proxy_infra;
pub mod scan;
pub mod terraform;
pub mod vercel;

pub use error::AppError;
pub use inspect::{inspect, Inspection};
