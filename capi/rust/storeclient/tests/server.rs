//! Tests against a real server: the binary named by STORE_BIN.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use storeclient::{Client, CreateOptions, ErrorCode, ObjectId, ObjectState};

struct Server {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Server {
    fn start() -> Server {
        let bin = std::env::var("STORE_BIN").expect("set STORE_BIN to the store server binary");
        let dir = std::env::temp_dir().join(format!(
            "storeclient-rs-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("store.sock");
        let child = Command::new(bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--memory")
            .arg("64M")
            .arg("--log-level")
            .arg("error")
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start the server");
        let server = Server { child: Some(child), dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Client::connect(Some(&server.socket)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "server did not come up");
            thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn client(&self) -> Client {
        Client::connect_with_name(Some(&self.socket), "rust-test").unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn put_open_round_trip_with_metadata() {
    let server = Server::start();
    let client = server.client();
    let id = ObjectId::from_key("round-trip");
    client.put_with(&id, b"hello world", &CreateOptions::new().metadata(b"meta")).unwrap();
    let reader = client.open(&id, Some(Duration::ZERO)).unwrap();
    assert_eq!(reader.data(), b"hello world");
    assert_eq!(reader.metadata(), b"meta");
    assert_eq!(reader.size(), 11);
    assert_eq!(reader.id(), id);

    let id2 = ObjectId::from_key("plain");
    client.put(&id2, b"x").unwrap();
    let r2 = client.open(&id2, None).unwrap();
    assert_eq!(r2.data(), b"x");
    assert_eq!(r2.metadata(), b"");
}

#[test]
fn writer_write_seek_seal() {
    let server = Server::start();
    let client = server.client();
    let id = ObjectId::from_key("writer");
    let mut w = client.create(&id, 10, &CreateOptions::new().metadata(b"m")).unwrap();
    assert_eq!(w.size(), 10);
    w.write_all(b"0123456789").unwrap();
    assert_eq!(w.seek(SeekFrom::Start(2)).unwrap(), 2);
    w.write_all(b"ab").unwrap();
    assert_eq!(w.seek(SeekFrom::End(-1)).unwrap(), 9);
    w.write_all(b"Z").unwrap();
    // Past the end: io::Write reports it as WriteZero, nothing is written.
    assert_eq!(w.write_all(b"more").unwrap_err().kind(), std::io::ErrorKind::WriteZero);
    assert!(w.seek(SeekFrom::Current(5)).is_err());
    w.data_mut()[0] = b'X';
    // Not visible before the seal; a small object is staged, so not even in the store yet.
    assert_eq!(client.open(&id, Some(Duration::ZERO)).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(client.info(&id).unwrap_err().code, ErrorCode::NotFound);
    w.seal().unwrap();
    let r = client.open(&id, Some(Duration::ZERO)).unwrap();
    assert_eq!(r.data(), b"X1ab45678Z");
    assert_eq!(r.metadata(), b"m");
}

#[test]
fn dropped_writer_is_aborted() {
    let server = Server::start();
    let client = server.client();
    let id = ObjectId::from_key("aborted");
    {
        let mut w = client.create(&id, 4, &CreateOptions::default()).unwrap();
        w.write_all(b"lost").unwrap();
    }
    assert!(!client.contains(&id).unwrap());
    assert_eq!(client.info(&id).unwrap_err().code, ErrorCode::NotFound);
    let mut w = client.create(&id, 3, &CreateOptions::default()).unwrap();
    w.write_all(b"new").unwrap();
    w.seal().unwrap();
    assert_eq!(client.open(&id, None).unwrap().data(), b"new");

    let id2 = ObjectId::from_key("explicit-abort");
    client.create(&id2, 4, &CreateOptions::default()).unwrap().abort().unwrap();
    client.put(&id2, b"ok").unwrap();
}

#[test]
fn errors_not_found_and_exists() {
    let server = Server::start();
    let client = server.client();
    let missing = ObjectId::from_key("missing");
    let err = client.open(&missing, Some(Duration::ZERO)).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(!err.to_string().is_empty());
    let err = client.open(&missing, Some(Duration::from_millis(50))).unwrap_err();
    assert_eq!(err.code, ErrorCode::TimedOut);

    // Larger than a staged object: in the store from the create on.
    let id = ObjectId::from_key("dup");
    let w = client.create(&id, 100 * 1024, &CreateOptions::default()).unwrap();
    let err = client.create(&id, 100 * 1024, &CreateOptions::default()).unwrap_err();
    assert_eq!(err.code, ErrorCode::Exists);
    assert_eq!(client.put(&id, b"x").unwrap_err().code, ErrorCode::Exists);
    drop(w);
    client.put(&id, b"x").unwrap();
    assert_eq!(client.put(&id, b"y").unwrap_err().code, ErrorCode::Exists);
    // A small (staged) writer of the same id hears of it at the seal.
    let w = client.create(&id, 8, &CreateOptions::default()).unwrap();
    assert_eq!(w.seal().unwrap_err().code, ErrorCode::Exists);
    assert_eq!(
        client.create(&ObjectId::from_key("zero"), 0, &CreateOptions::default()).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(client.unpin(&id).unwrap_err().code, ErrorCode::Misuse);
}

#[test]
fn management_calls() {
    let server = Server::start();
    let client = server.client();
    let a = ObjectId::from_key("a");
    let b = ObjectId::from_key("b");
    client.put_with(&a, &[1u8; 100], &CreateOptions::new().importance(3).metadata(b"md")).unwrap();
    client.put(&b, &[2u8; 50]).unwrap();
    assert!(client.contains(&a).unwrap());

    let info = client.info(&a).unwrap();
    assert_eq!(info.id, a);
    assert_eq!(info.data_size, 100);
    assert_eq!(info.metadata_size, 2);
    assert_eq!(info.state, ObjectState::Sealed);
    assert_eq!(info.importance, 3);
    assert_eq!(info.device, -1);

    client.set_importance(&a, 7).unwrap();
    assert_eq!(client.info(&a).unwrap().importance, 7);
    client.pin(&a).unwrap();
    assert_eq!(client.info(&a).unwrap().pin_count, 1);
    client.unpin(&a).unwrap();
    client.prefetch(&[a, b]).unwrap();

    let mut ids: Vec<ObjectId> = client.list().unwrap().iter().map(|i| i.id).collect();
    ids.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ids, want);

    let stats = client.stats().unwrap();
    assert_eq!(stats.object_count, 2);
    assert_eq!(stats.sealed_count, 2);
    assert!(stats.capacity_bytes >= 64 << 20);
    assert!(stats.client_count >= 1);

    // No spill directory on this server.
    assert_eq!(client.evict(1).unwrap_err().code, ErrorCode::NotSupported);

    client.delete(&a).unwrap();
    assert!(!client.contains(&a).unwrap());
    assert_eq!(client.delete(&a).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(client.list().unwrap().len(), 1);
}

#[test]
fn reader_read_and_seek() {
    let server = Server::start();
    let client = server.client();
    let id = ObjectId::from_key("reader");
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    client.put(&id, &data).unwrap();
    let mut r = client.open(&id, None).unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all, data);
    assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
    assert_eq!(r.seek(SeekFrom::Start(10)).unwrap(), 10);
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, &data[10..15]);
    assert_eq!(r.seek(SeekFrom::Current(-5)).unwrap(), 10);
    assert_eq!(r.seek(SeekFrom::End(-3)).unwrap(), 997);
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &data[997..]);
    assert!(r.seek(SeekFrom::End(1)).is_err());
    assert_eq!(r.position(), 1000);
    // The reader keeps the object alive after a delete.
    client.delete(&id).unwrap();
    assert_eq!(r.data(), &data[..]);
}

#[test]
fn one_client_from_four_threads() {
    let server = Server::start();
    let client = Arc::new(server.client());
    let waiter_id = ObjectId::from_key("sealed-later");
    // One thread blocks in open() until another thread seals the object.
    let waiter = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || {
            let r = client.open(&waiter_id, Some(Duration::from_secs(10))).unwrap();
            r.data().to_vec()
        })
    };
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let id = ObjectId::from_key(&format!("t{}-{}", t, i));
                    let payload = format!("thread {} object {}", t, i);
                    if i % 2 == 0 {
                        client.put(&id, payload.as_bytes()).unwrap();
                    } else {
                        let mut w = client
                            .create(&id, payload.len() as u64, &CreateOptions::default())
                            .unwrap();
                        w.write_all(payload.as_bytes()).unwrap();
                        w.seal().unwrap();
                    }
                    let mut r = client.open(&id, Some(Duration::ZERO)).unwrap();
                    let mut got = String::new();
                    r.read_to_string(&mut got).unwrap();
                    assert_eq!(got, payload);
                    assert!(client.contains(&id).unwrap());
                    drop(r);
                    client.delete(&id).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    client.put(&waiter_id, b"done").unwrap();
    assert_eq!(waiter.join().unwrap(), b"done");
    let stats = client.stats().unwrap();
    assert_eq!(stats.object_count, 1);
}

#[test]
fn scoped_threads_borrow_client() {
    let server = Server::start();
    let client = server.client();
    std::thread::scope(|s| {
        for t in 0..4 {
            let client = &client;
            s.spawn(move || {
                let id = ObjectId::from_key(&format!("scoped-{}", t));
                client.put(&id, &[t as u8; 16]).unwrap();
                // A Reader may be moved to another thread (Send).
                let r = client.open(&id, None).unwrap();
                let data =
                    std::thread::scope(|s2| s2.spawn(move || r.data().to_vec()).join().unwrap());
                assert_eq!(data, vec![t as u8; 16]);
            });
        }
    });
    assert_eq!(client.list().unwrap().len(), 4);
}
