//! `cairn login` and `cairn whoami`.

use std::io::{BufRead, IsTerminal, Write};

use cairn_proto::v1::WhoAmIRequest;

use crate::cli::LoginArgs;
use crate::client::Api;
use crate::error::CliError;
use crate::output::{paint, Color};
use crate::profile::{self, Connection, ConnectionEnv, ConnectionFlags, Profile, ProfileFile};
use crate::{call, json, Ctx};

pub async fn whoami(ctx: &Ctx) -> Result<(), CliError> {
    let api = ctx.api().await?;
    let me = call!(api, api.system().who_am_i(WhoAmIRequest {}))?;
    if ctx.json() {
        let mut v = json::whoami(&me);
        v["server"] = api.url.clone().into();
        json::print(&v);
        return Ok(());
    }
    let role = me
        .role()
        .as_str_name()
        .trim_start_matches("ROLE_")
        .to_lowercase();
    let kind = if me.machine { "machine user" } else { "user" };
    println!(
        "{} ({kind}, {role}) on {}",
        paint(&me.login, Color::Bold, ctx.color),
        api.url
    );
    if !me.name.is_empty() && me.name != me.login {
        println!("name   {}", me.name);
    }
    if !me.teams.is_empty() {
        println!("teams  {}", me.teams.join(", "));
    }
    Ok(())
}

pub async fn login(
    flags: &ConnectionFlags,
    env: &ConnectionEnv,
    args: LoginArgs,
) -> Result<(), CliError> {
    let path = profile::default_path().ok_or_else(|| {
        CliError::Other("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep profiles".into())
    })?;
    let name = flags
        .profile
        .clone()
        .or_else(|| env.profile.clone())
        .unwrap_or_else(|| "default".to_string());
    cairn_core::validate::non_empty("profile", &name, 64)?;
    let server = profile::normalize(
        flags
            .server
            .as_deref()
            .or(env.server.as_deref())
            .unwrap_or(profile::DEFAULT_SERVER),
    );
    let api_key = match (&flags.api_key_file, &env.api_key) {
        (Some(f), _) => profile::read_key_file(f)?,
        (None, Some(k)) => k.clone(),
        (None, None) => prompt_key(&server)?,
    };
    let mut file = ProfileFile::load(&path)?;

    let conn = Connection {
        server: server.clone(),
        api_key: Some(api_key.clone()),
    };
    let (api, version) = Api::connect(&conn).await?;
    let me = call!(api, api.system().who_am_i(WhoAmIRequest {}))?;

    file.profiles.insert(
        name.clone(),
        Profile {
            server: server.clone(),
            api_key,
        },
    );
    if !args.no_switch || file.current.is_none() {
        file.current = Some(name.clone());
    }
    file.save(&path)?;
    println!(
        "Logged in to {server} (cairn {}) as {}; profile {name:?} saved in {}{}",
        version.version,
        me.login,
        path.display(),
        if file.current.as_deref() == Some(name.as_str()) {
            " and made current"
        } else {
            ""
        }
    );
    Ok(())
}

/// Reads the key from the terminal without echo, or one line from piped stdin.
fn prompt_key(server: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("API key for {server}: ");
        let _ = std::io::stderr().flush();
    }
    let echo_off = tty && set_echo(false);
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo_off {
        set_echo(true);
        eprintln!();
    }
    read?;
    let key = line.trim().to_string();
    if key.is_empty() {
        return Err(CliError::Invalid(
            "no API key given: pass --api-key-file FILE, set CAIRN_API_KEY, or type it at the prompt".into(),
        ));
    }
    Ok(key)
}

/// `stty` keeps the binary free of a terminal library; if it is missing, the key is echoed,
/// which is no worse than typing it into a shell.
fn set_echo(on: bool) -> bool {
    std::process::Command::new("stty")
        .arg(if on { "echo" } else { "-echo" })
        .stdin(std::process::Stdio::inherit())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
