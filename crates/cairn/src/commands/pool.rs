//! `cairn workerpool …`

use cairn_core::validate;
use cairn_proto::v1 as pb;

use crate::cli::WorkerPoolCmd;
use crate::client::all_pages;
use crate::commands::check_labels;
use crate::error::CliError;
use crate::output::{now_nanos, paint, relative_time, Color, Table};
use crate::{call, json, Ctx};

pub async fn run(ctx: &Ctx, cmd: WorkerPoolCmd) -> Result<(), CliError> {
    match cmd {
        WorkerPoolCmd::Create {
            id,
            name,
            labels,
            token_file,
        } => {
            validate::slug("pool id", &id)?;
            check_labels(&labels)?;
            if let Some(f) = &token_file {
                if f.exists() {
                    return Err(CliError::Invalid(format!(
                        "{} exists: refusing to overwrite a token file",
                        f.display()
                    )));
                }
            }
            let api = ctx.api().await?;
            let res = call!(
                api,
                api.pools().create_worker_pool(pb::CreateWorkerPoolRequest {
                    name: name.unwrap_or_else(|| id.clone()),
                    id,
                    labels,
                })
            )?;
            let pool = res.pool.unwrap_or_default();
            if let Some(f) = &token_file {
                write_token(f, &res.token)?;
            }
            if ctx.json() {
                let mut v = json::worker_pool(&pool);
                if token_file.is_none() {
                    v["token"] = res.token.clone().into();
                }
                json::print(&v);
            } else if let Some(f) = token_file {
                println!(
                    "Created worker pool {}; token written to {}. Start a worker with `cairn agent --server URL --token-file {}`.",
                    pool.id,
                    f.display(),
                    f.display()
                );
            } else {
                println!(
                    "Created worker pool {}. Its token (shown only now):",
                    pool.id
                );
                println!("{}", res.token);
            }
            Ok(())
        }
        WorkerPoolCmd::List => {
            let api = &ctx.api().await?;
            let pools = all_pages(|page_token| async move {
                let page = call!(
                    api,
                    api.pools().list_worker_pools(pb::ListWorkerPoolsRequest {
                        page: Some(pb::PageRequest {
                            page_size: 500,
                            page_token,
                        }),
                    })
                )?;
                Ok((page.pools, page.next_page_token))
            })
            .await?;
            if ctx.json() {
                json::print(&pools.iter().map(json::worker_pool).collect());
                return Ok(());
            }
            let now = now_nanos();
            let mut t = Table::new(["ID", "NAME", "LABELS", "CREATED"]);
            for p in &pools {
                t.row([
                    p.id.clone(),
                    p.name.clone(),
                    p.labels.join(","),
                    relative_time(p.created_at, now),
                ]);
            }
            print!("{}", t.render(ctx.color));
            Ok(())
        }
        WorkerPoolCmd::Workers { pool } => {
            validate::slug("pool", &pool)?;
            let api = ctx.api().await?;
            let workers = call!(
                api,
                api.pools().list_workers(pb::ListWorkersRequest {
                    pool_id: pool.clone()
                })
            )?
            .workers;
            if ctx.json() {
                json::print(&workers.iter().map(json::worker).collect());
                return Ok(());
            }
            if workers.is_empty() {
                println!("No workers in pool {pool}. Start one with `cairn agent`.");
                return Ok(());
            }
            let now = now_nanos();
            let mut t = Table::new(["ID", "NAME", "STATUS", "JOBS", "HEARTBEAT", "LABELS"]);
            for w in &workers {
                t.row([
                    w.id.clone(),
                    w.name.clone(),
                    if w.connected {
                        paint("connected", Color::Green, ctx.color)
                    } else {
                        paint("gone", Color::Dim, ctx.color)
                    },
                    format!("{}/{}", w.run_ids.len(), w.max_jobs),
                    relative_time(w.last_heartbeat_at, now),
                    w.labels.join(","),
                ]);
            }
            print!("{}", t.render(ctx.color));
            Ok(())
        }
    }
}

#[cfg(unix)]
fn write_token(path: &std::path::Path, token: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CliError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    writeln!(f, "{token}").map_err(err)
}

#[cfg(not(unix))]
fn write_token(path: &std::path::Path, token: &str) -> Result<(), CliError> {
    std::fs::write(path, format!("{token}\n")).map_err(|source| CliError::File {
        path: path.to_path_buf(),
        source,
    })
}
