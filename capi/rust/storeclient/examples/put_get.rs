//! Puts an object, reads it back, prints what the server knows about it, and deletes what it
//! put.
//!
//! Usage: put_get [SOCKET] [KEY] [VALUE]
//!
//! SOCKET is the store's socket; without it (or when it is empty) the library's default is
//! used: $STORE_SOCKET when set, else $XDG_RUNTIME_DIR/store.sock, else /tmp/store-$UID.sock.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use storeclient::{Client, CreateOptions, ObjectId};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().filter(|s| !s.is_empty()).map(PathBuf::from);
    let key = args.next().unwrap_or_else(|| "example-key".to_string());
    let value = args.next().unwrap_or_else(|| "hello from rust".to_string());

    let client = Client::connect_with_name(socket.as_deref(), "put_get example")?;
    let id = ObjectId::from_key(&key);

    // One call: create, copy and seal.
    if client.contains(&id)? {
        client.delete(&id)?;
    }
    client.put_with(&id, value.as_bytes(), &CreateOptions::new().metadata(b"text/plain"))?;

    // Zero-copy read.
    let reader = client.open(&id, Some(Duration::from_secs(1)))?;
    println!(
        "{} = {:?} (metadata {:?})",
        id,
        String::from_utf8_lossy(reader.data()),
        String::from_utf8_lossy(reader.metadata())
    );
    drop(reader);

    // Streaming write and read of a second object.
    let id2 = ObjectId::from_key(format!("{}-copy", key).as_str());
    if client.contains(&id2)? {
        client.delete(&id2)?;
    }
    let mut w = client.create(&id2, value.len() as u64, &CreateOptions::default())?;
    w.write_all(value.as_bytes())?;
    w.seal()?;
    let mut text = String::new();
    client.open(&id2, None)?.read_to_string(&mut text)?;
    println!("{} = {:?}", id2, text);

    let info = client.info(&id)?;
    println!("info: {:?}", info);
    let stats = client.stats()?;
    println!(
        "store: {} objects, {} of {} bytes used",
        stats.object_count, stats.used_bytes, stats.capacity_bytes
    );

    // Leave the store as it was.
    client.delete_many(&[id, id2])?;
    println!("deleted {} and {}", id, id2);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("put_get: {}", e);
            ExitCode::FAILURE
        }
    }
}
