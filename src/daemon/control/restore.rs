//! The control connection of one `umbra restore`: the `restore` request
//! is answered once the writers prepared, then the connection waits for
//! the client's `restore_complete` while the client copies. Anything else
//! on it, or a hang-up, is a failed restore for the writers.

use std::io::BufReader;
use std::os::unix::net::UnixStream;

use super::refuse;
use crate::daemon::service::{Answer, Service};
use crate::protocol::{self, MAX_REQUEST_LINE, Request, Response};

/// Serves a restore; returns whether the connection goes on.
pub(super) fn serve(
    reader: &mut BufReader<UnixStream>,
    writer: &mut &UnixStream,
    service: &Service,
    set: &str,
    volumes: &[String],
    dry_run: bool,
) -> bool {
    let restore = match service.restore(set, volumes, dry_run) {
        Ok(restore) => restore,
        Err(e) => {
            tracing::info!("restore refused: {e}");
            return protocol::write_message(writer, &Response::<Answer>::error(e)).is_ok();
        }
    };
    let started = Answer::Restore(Box::new(restore.view().clone()));
    if let Err(e) = protocol::write_message(writer, &Response::Ok(started)) {
        tracing::warn!("the client of a restore went away: {e}");
        return false;
    }
    // No deadline: the copy takes as long as the tree is big.
    let line = match protocol::read_line(reader, MAX_REQUEST_LINE) {
        Ok(Some(line)) => line,
        Ok(None) | Err(_) => {
            tracing::warn!("the client of a restore went away before reporting it");
            return false;
        }
    };
    match protocol::parse_request(&line) {
        Ok(Request::RestoreComplete { succeeded }) => {
            let view = restore.complete(succeeded);
            protocol::write_message(writer, &Response::Ok(Answer::Restore(Box::new(view)))).is_ok()
        }
        Ok(_) => {
            drop(restore);
            refuse(
                writer,
                "a restore's next request must be restore_complete".into(),
            );
            false
        }
        Err(e) => {
            drop(restore);
            refuse(writer, format!("malformed request: {e}"));
            false
        }
    }
}
