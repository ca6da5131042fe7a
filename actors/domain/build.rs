//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the files of
//! `migrations/` (and of `migrations/postgres/`) when the crate compiles.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
