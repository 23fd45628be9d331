//! Tests against a real server: the binary named by STORE_BIN.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use storeclient::{
    BatchError, Client, CreateOptions, ErrorCode, ListOptions, ObjectId, ObjectState, SortKey,
};

struct Server {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Server {
    fn start() -> Server {
        Server::launch(false)
    }

    /// A server that spills to `spill_dir()`.
    fn start_with_spill() -> Server {
        Server::launch(true)
    }

    fn launch(spill: bool) -> Server {
        let bin = std::env::var("STORE_BIN").expect("set STORE_BIN to the store server binary");
        let dir = std::env::temp_dir().join(format!(
            "storeclient-rs-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("store.sock");
        let mut cmd = Command::new(bin);
        if spill {
            std::fs::create_dir(dir.join("spill")).unwrap();
            cmd.arg("--spill-dir").arg(dir.join("spill"));
        }
        let child = cmd
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

    fn spill_dir(&self) -> PathBuf {
        self.dir.join("spill")
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

fn key_ids(prefix: &str, n: usize) -> Vec<ObjectId> {
    (0..n).map(|i| ObjectId::from_key(&format!("{}-{}", prefix, i))).collect()
}

#[test]
fn put_many_then_open_many() {
    let server = Server::start();
    let client = server.client();
    // Small objects travel many to a round trip, a large one on its own.
    let ids = key_ids("batch", 300);
    let mut objects: Vec<(ObjectId, Vec<u8>)> =
        ids.iter().enumerate().map(|(i, id)| (*id, format!("value {}", i).into_bytes())).collect();
    objects[150].1 = vec![7u8; 200 * 1024];
    client.put_many(&objects, &CreateOptions::new().metadata(b"md").importance(2)).unwrap();
    assert_eq!(client.stats().unwrap().object_count, 300);
    assert_eq!(client.info(&ids[150]).unwrap().importance, 2);

    let readers = client.open_many(&ids, Some(Duration::ZERO)).unwrap();
    assert_eq!(readers.len(), ids.len());
    for ((id, data), reader) in objects.iter().zip(&readers) {
        let reader = reader.as_ref().expect("every object is there");
        assert_eq!(reader.id(), *id);
        assert_eq!(reader.data(), &data[..]);
        assert_eq!(reader.metadata(), b"md");
    }
    assert_eq!(client.info(&ids[0]).unwrap().reader_count, 1);
    drop(readers);

    // Borrowed slices and an empty batch.
    let more: [(ObjectId, &[u8]); 2] =
        [(ObjectId::from_key("s1"), b"one"), (ObjectId::from_key("s2"), b"two")];
    client.put_many(&more, &CreateOptions::default()).unwrap();
    client.put_many::<&[u8]>(&[], &CreateOptions::default()).unwrap();
    assert!(client.open_many(&[], None).unwrap().is_empty());
    assert_eq!(client.list().unwrap().len(), 302);
}

#[test]
fn put_many_reports_the_first_failure_and_the_count() {
    let server = Server::start();
    let client = server.client();
    let ids = key_ids("partial", 10);
    client.put(&ids[3], b"already here").unwrap();
    client.put(&ids[7], b"already here").unwrap();
    let objects: Vec<(ObjectId, &[u8])> = ids.iter().map(|id| (*id, &b"new"[..])).collect();
    let err = client.put_many(&objects, &CreateOptions::default()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Exists);
    assert_eq!(err.done, 8);
    assert!(err.error.message.contains(&ids[3].to_hex()), "{}", err);
    for (i, id) in ids.iter().enumerate() {
        let want: &[u8] = if i == 3 || i == 7 { b"already here" } else { b"new" };
        assert_eq!(client.open(id, Some(Duration::ZERO)).unwrap().data(), want);
    }

    // An empty object fails the whole call before anything is put.
    let fresh = key_ids("fresh", 3);
    let objects: Vec<(ObjectId, &[u8])> = vec![(fresh[0], b"a"), (fresh[1], b""), (fresh[2], b"c")];
    let err = client.put_many(&objects, &CreateOptions::default()).unwrap_err();
    assert_eq!((err.code(), err.done), (ErrorCode::InvalidArgument, 0));
    assert!(!client.contains(&fresh[0]).unwrap());

    // `?` turns it into the crate's Error.
    fn put_all(client: &Client, objects: &[(ObjectId, &[u8])]) -> storeclient::Result<()> {
        client.put_many(objects, &CreateOptions::default())?;
        Ok(())
    }
    let err = put_all(&client, &[(ids[0], b"x")]).unwrap_err();
    assert_eq!(err.code, ErrorCode::Exists);
    let batch = BatchError { error: err.clone(), done: 4 };
    assert_eq!(batch.to_string(), format!("{} (4 done)", err));
}

#[test]
fn open_many_gives_none_for_missing_ids() {
    let server = Server::start();
    let client = server.client();
    let ids = key_ids("some", 6);
    for id in ids.iter().step_by(2) {
        client.put(id, id.as_bytes()).unwrap();
    }
    for timeout in [Duration::ZERO, Duration::from_millis(50)] {
        let readers = client.open_many(&ids, Some(timeout)).unwrap();
        let present: Vec<bool> = readers.iter().map(Option::is_some).collect();
        assert_eq!(present, [true, false, true, false, true, false]);
        for r in readers.iter().flatten() {
            assert_eq!(r.data(), r.id().as_bytes());
        }
    }
    // Only the objects handed out are held.
    assert_eq!(client.stats().unwrap().open_count, 0);

    // Waiting: the missing ones are sealed by another client while the call waits.
    let other = server.client();
    let late = [ids[1], ids[3], ids[5]];
    let readers = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(100));
            for id in &late {
                other.put(id, b"late").unwrap();
            }
        });
        client.open_many(&ids, Some(Duration::from_secs(10))).unwrap()
    });
    assert!(readers.iter().all(Option::is_some));
    assert_eq!(readers[3].as_ref().unwrap().data(), b"late");
}

#[test]
fn delete_many_tries_every_id() {
    let server = Server::start();
    let client = server.client();
    let ids = key_ids("del", 5);
    for id in &ids {
        client.put(id, b"x").unwrap();
    }
    client.delete_many(&ids[..2]).unwrap();
    assert!(!client.contains(&ids[0]).unwrap());
    client.delete_many(&[]).unwrap();

    // ids[0] and ids[1] are gone: the rest are still deleted, the first failure reported.
    let err = client.delete_many(&ids).unwrap_err();
    assert_eq!((err.code(), err.done), (ErrorCode::NotFound, 3));
    assert!(err.error.message.contains(&ids[0].to_hex()), "{}", err);
    assert_eq!(client.stats().unwrap().object_count, 0);

    // An object still being written (larger than a staged one, so the store has it).
    let writing = ObjectId::from_key("being-written");
    let sealed = ObjectId::from_key("sealed");
    let w = client.create(&writing, 128 * 1024, &CreateOptions::default()).unwrap();
    client.put(&sealed, b"y").unwrap();
    let err = client.delete_many(&[writing, sealed]).unwrap_err();
    assert_eq!((err.code(), err.done), (ErrorCode::NotSealed, 1));
    assert!(!client.contains(&sealed).unwrap());
    w.seal().unwrap();
    client.delete_many(&[writing]).unwrap();
}

#[test]
fn list_page_and_list_pages() {
    let server = Server::start();
    let client = server.client();
    let page = client.list_page(&ListOptions::default()).unwrap();
    assert_eq!((page.objects.len(), page.total, page.next_offset), (0, 0, None));
    assert_eq!(client.list_pages(ListOptions::default()).count(), 0);

    let ids = key_ids("page", 25);
    for (i, id) in ids.iter().enumerate() {
        client.put(id, &vec![1u8; 100 + i]).unwrap();
    }
    // Sorted by the server, largest first, ten at a time.
    let opts = ListOptions::new().sort(SortKey::Size).descending(true).limit(10);
    let first = client.list_page(&opts).unwrap();
    assert_eq!(first.total, 25);
    assert_eq!(first.next_offset, Some(10));
    let sizes: Vec<u64> = first.objects.iter().map(|o| o.data_size).collect();
    assert_eq!(sizes, (115..125).rev().collect::<Vec<u64>>());
    let last = client.list_page(&opts.clone().offset(20)).unwrap();
    assert_eq!(last.objects.len(), 5);
    assert_eq!(last.next_offset, None);
    assert_eq!(last.objects[4].id, ids[0]);
    // Past the end, and a page of none (the total only).
    let past = client.list_page(&opts.clone().offset(100)).unwrap();
    assert_eq!((past.objects.len(), past.total, past.next_offset), (0, 25, None));
    let none = client.list_page(&ListOptions::new().limit(0)).unwrap();
    assert_eq!((none.objects.len(), none.total, none.next_offset), (0, 25, None));

    // The pages in turn, by id.
    let mut pages = client.list_pages(ListOptions::new().limit(7));
    let mut seen = Vec::new();
    let mut lens = Vec::new();
    for page in &mut pages {
        let page = page.unwrap();
        lens.push(page.len());
        seen.extend(page.into_iter().map(|o| o.id));
    }
    assert_eq!(lens, [7, 7, 7, 4]);
    assert_eq!(pages.total(), Some(25));
    assert!(pages.next().is_none());
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
    // Exactly full pages end without an empty one.
    assert_eq!(client.list_pages(ListOptions::new().limit(5)).count(), 5);

    // By id prefix.
    let prefix = ids[0].to_hex()[..1].to_string();
    let matching = ids.iter().filter(|id| id.to_hex().starts_with(&prefix)).count();
    let page = client.list_page(&ListOptions::new().id_prefix(&prefix)).unwrap();
    assert_eq!(page.total as usize, matching);
    assert!(page.objects.iter().all(|o| o.id.to_hex().starts_with(&prefix)));
    let full = client.list_page(&ListOptions::new().id_prefix(&ids[3].to_hex())).unwrap();
    assert_eq!(full.objects.iter().map(|o| o.id).collect::<Vec<_>>(), [ids[3]]);

    // Bad options.
    for opts in [
        ListOptions::new().id_prefix("xyz"),
        ListOptions::new().id_prefix(&"a".repeat(41)),
        ListOptions::new().id_prefix("a\0b"),
        ListOptions::new().limit(ListOptions::MAX_LIMIT + 1),
    ] {
        let err = client.list_page(&opts).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{:?}", opts);
        let mut pages = client.list_pages(opts);
        assert_eq!(pages.next().unwrap().unwrap_err().code, ErrorCode::InvalidArgument);
        assert!(pages.next().is_none());
    }
}

#[test]
fn list_clients_sees_every_connection() {
    let server = Server::start();
    let client = server.client();
    let long_name = "n".repeat(100);
    let other = Client::connect_with_name(Some(&server.socket), &long_name).unwrap();
    other.put(&ObjectId::from_key("by-other"), b"x").unwrap();
    let _reader = other.open(&ObjectId::from_key("by-other"), None).unwrap();

    let clients = client.list_clients().unwrap();
    assert_eq!(clients.len(), 2);
    let me: Vec<_> = clients.iter().filter(|c| c.is_self).collect();
    assert_eq!(me.len(), 1);
    assert_eq!(me[0].name, "rust-test");
    assert_eq!(me[0].pid as u32, std::process::id());
    let them = clients.iter().find(|c| !c.is_self).unwrap();
    assert!(them.name.len() < long_name.len() && long_name.starts_with(&them.name));
    assert_eq!(them.objects_created, 1);
    assert_eq!(them.readers_held, 1);
    assert_ne!(them.client_id, me[0].client_id);
    assert!(them.connect_time_ns > 0);

    // From the other side, the other one is self.
    let seen = other.list_clients().unwrap();
    assert_eq!(seen.iter().find(|c| c.is_self).unwrap().client_id, them.client_id);
    drop(_reader);
    drop(other);
    assert_eq!(client.list_clients().unwrap().len(), 1);
}

#[test]
fn spill_url_and_spill_files() {
    // Without a spill directory: no files, no copies on disk.
    let server = Server::start();
    let client = server.client();
    assert!(client.list_spill_files().unwrap().is_empty());
    let id = ObjectId::from_key("in-memory");
    client.put(&id, b"x").unwrap();
    assert_eq!(client.spill_url(&id).unwrap_err().code, ErrorCode::NotFound);
    drop(client);
    drop(server);

    let server = Server::start_with_spill();
    let client = server.client();
    let spill_dir = server.spill_dir().canonicalize().unwrap();
    assert!(client.list_spill_files().unwrap().is_empty());
    let id = ObjectId::from_key("spilled");
    let data = vec![9u8; 1 << 20];
    client.put(&id, &data).unwrap();
    let err = client.spill_url(&id).unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.contains("no copy on disk"), "{}", err);
    assert_eq!(
        client.spill_url(&ObjectId::from_key("absent")).unwrap_err().code,
        ErrorCode::NotFound
    );

    assert!(client.evict(1).unwrap() > 0);
    let url = client.spill_url(&id).unwrap();
    let prefix = format!("file://{}/", spill_dir.display());
    assert!(url.starts_with(&prefix), "{}", url);
    assert!(
        url.contains("?offset=") && url.ends_with(&format!("&size={}", data.len() + 16)),
        "{}",
        url
    );
    let files = client.list_spill_files().unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].path.starts_with(&spill_dir), "{:?}", files[0]);
    assert!(url[7..].starts_with(&*files[0].path.to_string_lossy()));
    assert_eq!(files[0].live_objects, 1);
    assert!(files[0].size >= data.len() as u64);
    assert!(files[0].created_time_ns > 0);

    // Read back from disk, then deleted: its copy is gone.
    assert_eq!(client.open(&id, None).unwrap().data(), &data[..]);
    client.delete(&id).unwrap();
    assert_eq!(client.spill_url(&id).unwrap_err().code, ErrorCode::NotFound);
}
