//! An application that is its own writer: it moves money between two
//! accounts in a SQLite database (WAL mode) on an umbra volume, one
//! transaction per transfer, and takes part in every shadow copy set. At
//! PrepareForSnapshot it checkpoints the WAL; from Freeze to Thaw (or Abort)
//! it holds new transactions, so every set holds whole transactions only.
//!
//!     cargo run --example sqlite_writer -- SOCKET DB [VOLUME] [SECONDS]
//!
//! It stops after SECONDS (default 10) or at SIGTERM, once no set holds it
//! frozen, and prints the number of transfers it made. It never touches a
//! snapshot.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use umbra_coordinator::client::WriterClient;
use umbra_coordinator::{Event, Failure, Registration};

/// The application's transaction gate: `true` while a set holds it.
type Gate = Arc<(Mutex<bool>, Condvar)>;

/// Set while the event thread waits for the gate. The transfer loop
/// releases the gate and takes it again at once; a mutex is not fair, so
/// without this the event thread could wait behind transfer after transfer
/// and miss umbra's answer window.
type Wanted = Arc<AtomicBool>;

/// Takes the gate for an event, ahead of the transfer loop.
fn take_gate<'a>(gate: &'a Gate, wanted: &Wanted) -> Result<MutexGuard<'a, bool>, Failure> {
    wanted.store(true, Ordering::SeqCst);
    let taken = gate.0.lock().map_err(|_| Failure::fatal("poisoned"));
    wanted.store(false, Ordering::SeqCst);
    taken
}

fn open(db: &PathBuf) -> rusqlite::Result<Connection> {
    let conn = Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: sqlite_writer SOCKET DB [VOLUME] [SECONDS]";
    let socket = PathBuf::from(args.next().ok_or(usage)?);
    let db = PathBuf::from(args.next().ok_or(usage)?);
    let volume = args.next().unwrap_or_else(|| "data".into());
    let seconds: u64 = args.next().map_or(Ok(10), |s| s.parse())?;

    let conn = open(&db)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS transfer (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL);
         INSERT OR IGNORE INTO account VALUES (1, 1000), (2, 0);",
    )?;

    let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
    let wanted: Wanted = Arc::new(AtomicBool::new(false));
    let client = WriterClient::connect(&socket, &Registration::new("sqlite", &[&volume]))?;
    {
        let (gate, wanted) = (gate.clone(), wanted.clone());
        let db = db.clone();
        thread::spawn(move || {
            let checkpoint = open(&db);
            let result = client.serve(|event| {
                let wake = &gate.1;
                match event.event {
                    Event::PrepareForSnapshot => {
                        // Under the gate: no transaction is half done.
                        let _quiet = take_gate(&gate, &wanted)?;
                        let conn = checkpoint
                            .as_ref()
                            .map_err(|e| Failure::fatal(e.to_string()))?;
                        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                            .map_err(|e| Failure::retryable(e.to_string()))?;
                    }
                    Event::Freeze => {
                        *take_gate(&gate, &wanted)? = true;
                    }
                    // Abort may come twice, or with nothing frozen.
                    Event::Thaw | Event::Abort => {
                        *take_gate(&gate, &wanted)? = false;
                        wake.notify_all();
                    }
                    _ => {}
                }
                Ok(())
            });
            if let Err(e) = result {
                eprintln!("sqlite_writer: {e}");
            }
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut conn = conn;
    let mut transfers = 0u64;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        while wanted.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        let (frozen, wake) = &*gate;
        let mut held = frozen.lock().map_err(|_| "poisoned")?;
        while *held {
            held = wake.wait(held).map_err(|_| "poisoned")?;
        }
        let tx = conn.transaction()?;
        tx.execute("UPDATE account SET balance = balance - 1 WHERE id = 1", [])?;
        tx.execute("UPDATE account SET balance = balance + 1 WHERE id = 2", [])?;
        tx.execute("INSERT INTO transfer (amount) VALUES (1)", [])?;
        tx.commit()?;
        drop(held);
        transfers += 1;
    }
    // Leaving while frozen would abort the set being taken: wait for Thaw.
    let (frozen, wake) = &*gate;
    let mut held = frozen.lock().map_err(|_| "poisoned")?;
    while *held {
        held = wake.wait(held).map_err(|_| "poisoned")?;
    }
    println!("{transfers}");
    Ok(())
}
