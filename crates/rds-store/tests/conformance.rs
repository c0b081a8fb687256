//! The store conformance suite ([`rds_store::conformance`]) against SQLite files in a temporary
//! directory; one test per case.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rds_store::conformance::StoreFactory;
use rds_store::{Store, StoreConfig};

/// Fresh SQLite databases in a temporary directory that lives as long as the factory.
struct Sqlite {
    dir: tempfile::TempDir,
    next: AtomicU64,
}

impl Sqlite {
    fn new() -> Self {
        Sqlite { dir: tempfile::tempdir().expect("a temporary directory"), next: AtomicU64::new(0) }
    }

    /// The configuration of a database no other store of this factory uses.
    fn new_database(&self) -> StoreConfig {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        StoreConfig::Sqlite { path: PathBuf::from(self.dir.path()).join(format!("db-{n}.db")) }
    }
}

#[async_trait::async_trait]
impl StoreFactory for Sqlite {
    async fn fresh(&self) -> Arc<dyn Store> {
        rds_store::open(&self.new_database()).await.expect("opening a new database")
    }

    async fn pair(&self) -> (Arc<dyn Store>, Arc<dyn Store>) {
        let config = self.new_database();
        // Each open holds its own connection, as two managers on one file do.
        let one = rds_store::open(&config).await.expect("opening a new database");
        let two = rds_store::open(&config).await.expect("opening the same database again");
        (one, two)
    }
}

rds_store::conformance_tests!(Sqlite::new());
