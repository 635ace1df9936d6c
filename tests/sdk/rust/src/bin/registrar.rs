//! Child process used by the "client goes away" test: registers the instances given on the
//! command line (`SERVICE IP:PORT...`), prints `REGISTERED`, then blocks until killed or
//! until stdin is closed, and exits WITHOUT deregistering. With `REGISTRAR_PERSISTENT=1` the
//! instances are persistent (`ephemeral: false`, one registration each).
use nacelle_sdk_conformance_rust::{instance, new_naming, GROUP};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let svc = args.next().expect("usage: registrar SERVICE IP:PORT...");
    let instances: Vec<_> = args
        .map(|a| {
            let (ip, port) = a.split_once(':').expect("IP:PORT");
            instance(ip, port.parse().expect("port"))
        })
        .collect();
    let persistent = std::env::var("REGISTRAR_PERSISTENT").is_ok_and(|v| v == "1");
    let ns = new_naming("registrar").await;
    if persistent {
        for mut i in instances {
            i.ephemeral = false;
            ns.register_instance(svc.clone(), Some(GROUP.into()), i).await.expect("register persistent");
        }
    } else if instances.len() == 1 {
        ns.register_instance(svc, Some(GROUP.into()), instances[0].clone()).await.expect("register");
    } else {
        ns.batch_register_instance(svc, Some(GROUP.into()), instances).await.expect("batch register");
    }
    println!("REGISTERED");
    let mut buf = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    std::process::exit(0);
}
