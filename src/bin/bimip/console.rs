//! `bimip console`: the interactive developer console. A line editor (reedline: history, Tab completion) on the
//! main thread; each connection is a task on a tokio runtime that sends what the console hands it and prints
//! every stanza as it arrives, above the prompt (reedline's external printer); backend API calls go through the
//! gRPC client. The command language and the stanza display are the library's (`bimip::console`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::SyncSender;

use anyhow::{Context, Result, anyhow};
use bimip::admin::proto as pb;
use bimip::client::{Client, ClientOptions, Event};
use bimip::console::command::{HELP, WORDS};
use bimip::console::show::{self, Colour};
use bimip::console::{AdminCommand, Command};
use bimip::proto::message_scheme::Payload;
use reedline::{
    ColumnarMenu, DefaultCompleter, DefaultPrompt, DefaultPromptSegment, Emacs, ExternalPrinter, FileBackedHistory,
    KeyCode, KeyModifiers, MenuBuilder, Reedline, ReedlineEvent, ReedlineMenu, Signal, default_emacs_keybindings,
};
use tokio::sync::mpsc;

#[derive(clap::Args)]
pub struct ConsoleArgs {
    /// The server for `connect`: ws://HOST:PORT/ws, wss://..., tcp://HOST:PORT or tls://HOST:PORT.
    #[arg(long, default_value = "ws://127.0.0.1:7420/ws")]
    url: String,
    /// The backend API (gRPC) of the same server.
    #[arg(long, default_value = "http://127.0.0.1:7423")]
    grpc: String,
    /// The server's data directory: its admin secret, and its development key when the API cannot mint tokens.
    #[arg(long, value_name = "DIR", default_value = "bimip-data")]
    data_dir: PathBuf,
    /// The backend API's secret (default DATA_DIR/admin-secret).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Accept any TLS certificate (development servers with a self-signed one).
    #[arg(long)]
    insecure: bool,
    /// No colours (also when NO_COLOR is set).
    #[arg(long)]
    no_color: bool,
    /// Where the line history is kept (default ~/.bimip_console_history).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
}

type Admin = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, bimip::admin::grpc::BearerHeader>,
>;

/// What the console hands a connection's task.
enum Outgoing {
    Stanza(Box<Payload>),
    Raw(Vec<u8>),
    Close,
}

struct Conn {
    name: String,
    tx: mpsc::UnboundedSender<Outgoing>,
}

struct Console {
    args: ConsoleArgs,
    colour: Colour,
    printer: SyncSender<String>,
    conns: Vec<Conn>,
    current: Option<usize>,
    admin: Option<Admin>,
}

/// Runs the console until `quit` or Ctrl-D.
pub fn run(args: ConsoleArgs) -> Result<ExitCode> {
    let colour = if args.no_color || std::env::var_os("NO_COLOR").is_some() {
        Colour::Off
    } else {
        Colour::On
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let printer = ExternalPrinter::<String>::new(4096);
    let sender = printer.sender();
    let history_path = args
        .history
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".bimip_console_history")));
    let history = match history_path {
        Some(path) => FileBackedHistory::with_file(1000, path),
        None => FileBackedHistory::new(1000),
    }
    .context("opening the history file")?;
    let mut keybindings = default_emacs_keybindings();
    keybindings.add_binding(
        KeyModifiers::NONE,
        KeyCode::Tab,
        ReedlineEvent::UntilFound(vec![
            ReedlineEvent::Menu("completion_menu".to_string()),
            ReedlineEvent::MenuNext,
        ]),
    );
    let completer = DefaultCompleter::new_with_wordlen(WORDS.iter().map(|w| w.to_string()).collect(), 2);
    let mut editor = Reedline::create()
        .with_history(Box::new(history))
        .with_completer(Box::new(completer))
        .with_menu(ReedlineMenu::EngineCompleter(Box::new(
            ColumnarMenu::default().with_name("completion_menu"),
        )))
        .with_edit_mode(Box::new(Emacs::new(keybindings)))
        .with_external_printer(printer);
    let mut console = Console {
        args,
        colour,
        printer: sender,
        conns: Vec::new(),
        current: None,
        admin: None,
    };
    println!("bimip console: `help` lists the commands; Tab completes, Ctrl-D quits.");
    loop {
        let label = console
            .current
            .map_or_else(|| "bimip".to_string(), |i| console.conns[i].name.clone());
        let prompt = DefaultPrompt::new(DefaultPromptSegment::Basic(label), DefaultPromptSegment::Empty);
        match editor.read_line(&prompt)? {
            Signal::Success(line) => match Command::parse(&line) {
                Ok(None) => {}
                Ok(Some(Command::Quit)) => break,
                Ok(Some(command)) => {
                    if let Err(e) = runtime.block_on(console.execute(command)) {
                        println!("{}", show::problem(colour, &format!("{e:#}")));
                    }
                }
                Err(e) => println!("{}", show::problem(colour, &e.to_string())),
            },
            Signal::CtrlD => break,
            Signal::CtrlC => {}
            _ => {}
        }
    }
    for conn in &console.conns {
        let _ = conn.tx.send(Outgoing::Close);
    }
    // Lets the connections close cleanly.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(ExitCode::SUCCESS)
}

impl Console {
    fn say(&self, who: &str, text: &str) {
        println!("{}", show::note(self.colour, who, text));
    }

    fn now() -> i64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    async fn execute(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Help => println!("{HELP}"),
            Command::Quit => {}
            Command::Connect { eid, device, token } => self.connect(&eid, &device, token).await?,
            Command::Use { which } => {
                let at = match which.parse::<usize>() {
                    Ok(n) => n.checked_sub(1).filter(|i| *i < self.conns.len()),
                    Err(_) => self.conns.iter().position(|c| c.name == which),
                };
                let at = at.ok_or_else(|| anyhow!("no connection {which:?}: see `list`"))?;
                self.current = Some(at);
                self.say(&self.conns[at].name, "is the current connection");
            }
            Command::List => {
                for (i, conn) in self.conns.iter().enumerate() {
                    let open = if conn.tx.is_closed() { "closed" } else { "open" };
                    let mark = if Some(i) == self.current { "*" } else { " " };
                    println!("{mark}{} {} ({open})", i + 1, conn.name);
                }
            }
            Command::Close => self.outgoing(Outgoing::Close)?,
            Command::Logout => {
                let logout = bimip::proto::Logout {
                    r#type: 1,
                    ..Default::default()
                };
                self.outgoing(Outgoing::Stanza(Box::new(Payload::Logout(logout))))?;
            }
            Command::Send { yaml } => {
                let value: serde_json::Value =
                    serde_norway::from_str(&yaml).context("send takes YAML (or JSON): a MessageScheme")?;
                let bytes = bimip::codec::json::json_to_bytes("MessageScheme", &value)?;
                self.outgoing(Outgoing::Raw(bytes))?;
            }
            Command::Admin(admin) => self.admin_call(admin).await?,
            stanza => {
                let payload = stanza
                    .payload(Self::now())
                    .ok_or_else(|| anyhow!("not a stanza command"))?;
                self.outgoing(Outgoing::Stanza(Box::new(payload)))?;
            }
        }
        Ok(())
    }

    fn outgoing(&self, out: Outgoing) -> Result<()> {
        let conn = self
            .current
            .map(|i| &self.conns[i])
            .ok_or_else(|| anyhow!("no connection: `connect EID [DEVICE]` first"))?;
        conn.tx
            .send(out)
            .map_err(|_| anyhow!("{} is closed: `connect` again or `use` another", conn.name))
    }

    async fn admin(&mut self) -> Result<&mut Admin> {
        if self.admin.is_none() {
            let path = self
                .args
                .secret_file
                .clone()
                .unwrap_or_else(|| self.args.data_dir.join(bimip::keys::ADMIN_SECRET));
            let secret = bimip::keys::admin_secret(&path, false)?;
            let client = bimip::admin::grpc::connect(&self.args.grpc, &secret, None)
                .await
                .with_context(|| format!("the backend API at {}", self.args.grpc))?;
            self.admin = Some(client);
        }
        self.admin.as_mut().ok_or_else(|| anyhow!("no backend API"))
    }

    /// A token for the device: from the backend API, or else signed with the data directory's development key.
    async fn mint(&mut self, eid: &str, device: &str) -> Result<String> {
        let request = pb::MintTokenRequest {
            eid: eid.into(),
            device_id: device.into(),
            lifetime_s: 3600,
        };
        let from_api = match self.admin().await {
            Ok(admin) => Some(admin.mint_token(request).await),
            Err(_) => None,
        };
        match from_api {
            Some(Ok(reply)) => Ok(reply.into_inner().token),
            Some(Err(status)) => Err(anyhow!("MintToken: {}", status.message())),
            None => {
                use bimip::core::auth::{Algorithm, Claims};
                let key = self.args.data_dir.join(bimip::keys::DEV_PRIVATE_KEY);
                let signer = bimip::keys::load_signer(Algorithm::EdDsa, &key)
                    .context("no backend API and no development key to mint a token with: pass --token")?;
                let iat = Self::now() / 1000;
                let claims = Claims {
                    eid: eid.into(),
                    device_id: device.into(),
                    jti: format!("console-{}", Self::now()),
                    iat,
                    exp: iat + 3600,
                    ..Claims::default()
                };
                Ok(signer.mint(&claims)?)
            }
        }
    }

    async fn connect(&mut self, eid: &str, device: &str, token: Option<String>) -> Result<()> {
        let token = match token {
            Some(token) => token,
            None => self.mint(eid, device).await?,
        };
        let options = ClientOptions {
            insecure_skip_verify: self.args.insecure,
            ..ClientOptions::default()
        };
        let client = Client::connect(&self.args.url, &token, options)
            .await
            .with_context(|| format!("connecting to {}", self.args.url))?;
        let name = client
            .session()
            .map_or_else(|| format!("{eid}/{device}"), |s| format!("{}/{}", s.eid, s.device));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve_connection(
            client,
            rx,
            name.clone(),
            self.colour,
            self.printer.clone(),
        ));
        self.conns.push(Conn { name: name.clone(), tx });
        self.current = Some(self.conns.len() - 1);
        self.say(&name, &format!("connected as connection {}", self.conns.len()));
        Ok(())
    }

    async fn admin_call(&mut self, command: AdminCommand) -> Result<()> {
        let colour = self.colour;
        let admin = self.admin().await?;
        let line = |text: String| println!("{}", show::note(colour, "admin", &text));
        let status = |s: tonic::Status| anyhow!("{:?}: {}", s.code(), s.message());
        match command {
            AdminCommand::Sessions { eid } => {
                let list = admin
                    .list_sessions(pb::User { eid: eid.clone() })
                    .await
                    .map_err(status)?;
                let sessions = list.into_inner().sessions;
                line(format!("{eid}: {} session(s)", sessions.len()));
                for s in sessions {
                    line(format!(
                        "  {} {:?} on {} since {}",
                        s.device_id,
                        s.transport(),
                        s.node,
                        s.since
                    ));
                }
            }
            AdminCommand::RevokeDevice { eid, device } => {
                let request = pb::Device { eid, device_id: device };
                let reply = admin.revoke_device(request).await.map_err(status)?.into_inner();
                line(format!("revoked; {} session(s) ended", reply.sessions_ended));
            }
            AdminCommand::RevokeUser { eid } => {
                let reply = admin.revoke_user(pb::User { eid }).await.map_err(status)?.into_inner();
                line(format!("revoked; {} session(s) ended", reply.sessions_ended));
            }
            AdminCommand::RevokeToken { token } => {
                let request = pb::RevokeTokenRequest { token };
                let reply = admin.revoke_token(request).await.map_err(status)?.into_inner();
                line(format!("revoked; {} session(s) ended", reply.sessions_ended));
            }
            AdminCommand::End { eid, device } => {
                admin
                    .end_session(pb::Device { eid, device_id: device })
                    .await
                    .map_err(status)?;
                line("session ended".to_string());
            }
            AdminCommand::Push { eid, kind, data } => {
                let request = pb::PushRequest {
                    eid,
                    r#type: kind,
                    data: data.into_iter().collect(),
                };
                let reply = admin.push(request).await.map_err(status)?.into_inner();
                line(format!("pushed to {} device(s)", reply.devices));
            }
            AdminCommand::Awareness { eid } => {
                let a = admin
                    .get_awareness(pb::User { eid })
                    .await
                    .map_err(status)?
                    .into_inner();
                line(format!("{a:?}"));
            }
            AdminCommand::Stats => {
                let s = admin.get_stats(pb::StatsRequest {}).await.map_err(status)?.into_inner();
                line(format!("{s:?}"));
            }
        }
        Ok(())
    }
}

/// One connection: sends what the console hands it, prints what arrives, until either side closes.
async fn serve_connection(
    mut client: Client,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    name: String,
    colour: Colour,
    printer: SyncSender<String>,
) {
    let print = |line: String| {
        let _ = printer.send(line);
    };
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Outgoing::Stanza(payload)) => {
                    print(show::stanza(colour, &name, "->", &payload));
                    if let Err(e) = client.send(*payload).await {
                        print(show::problem(colour, &format!("[{name}] {e}")));
                    }
                }
                Some(Outgoing::Raw(bytes)) => {
                    if let Err(e) = client.send_raw(bytes).await {
                        print(show::problem(colour, &format!("[{name}] {e}")));
                    }
                }
                Some(Outgoing::Close) | None => {
                    let code = client.close().await;
                    print(show::note(colour, &name, &format!("closed ({code:?})")));
                    break;
                }
            },
            event = client.next_event() => match event {
                Some(Event::Stanza(payload)) => print(show::stanza(colour, &name, "<-", &payload)),
                Some(Event::Closed { code, reason }) => {
                    print(show::note(colour, &name, &format!("closed by the server: {code:?} {reason}")));
                    break;
                }
                Some(other) => print(show::note(colour, &name, &format!("{other:?}"))),
                None => {
                    print(show::note(colour, &name, "closed"));
                    break;
                }
            },
        }
    }
}
