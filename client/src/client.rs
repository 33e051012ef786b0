//! [`Client`]: one user's home directory, opened; the API the CLI and the tests call.

use std::future::Future;
use std::path::{Path, PathBuf};

use dpf::{OsRandom, RandomSource};
use serde::Serialize;

use crate::clock::{RoundClock, now_ms};
use crate::code::{decode_code, encode_code, safety_number};
use crate::config::{ClientConfig, check_params};
use crate::delivery::{self, MAX_MESSAGE};
use crate::engine;
use crate::error::Error;
use crate::frame;
use crate::fsutil::ensure_private_dir;
use crate::identity::Identity;
use crate::net::{ServerId, Servers};
use crate::ratchet::HEAL_EVERY;
use crate::schedule::{Schedule, random_below};
use crate::store::{RoundRecord, Store};
use crate::wire;

/// File names inside the home directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The key file.
pub const KEY_FILE: &str = "identity.key";
/// The SQLite store.
pub const STORE_FILE: &str = "store.db";

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Servers and (unless `params_from_servers`) the pinned parameters.
    pub config: ClientConfig,
    /// Pin the parameters both servers announce (they must announce the same).
    pub params_from_servers: bool,
    /// Invite token for registration.
    pub invite: Option<String>,
}

/// Who this client is.
#[derive(Debug, Clone, Serialize)]
pub struct WhoAmI {
    /// The contact code to give to others.
    pub contact_code: String,
    /// X25519 public key, hex.
    pub public_key: String,
    /// Ed25519 account key, hex.
    pub account: String,
}

/// A contact, for display.
#[derive(Debug, Clone, Serialize)]
pub struct ContactView {
    /// The user's name for it.
    pub name: String,
    /// Its slot in the contact table (read position and write channel).
    pub index: usize,
    /// Its contact code.
    pub contact_code: String,
    /// The safety number of the pair.
    pub safety_number: String,
    /// Fragments queued to it and not yet acknowledged.
    pub unacked_fragments: u32,
    /// DH steps the pair has completed: 0 means it still uses the keys derived from the two
    /// static keys (not forward secret yet; the first exchange of frames moves it to 1).
    pub epoch: u32,
    /// The round in which this side entered the current epoch (`None` in epoch 0).
    pub epoch_since_round: Option<u64>,
}

/// A message just queued.
#[derive(Debug, Clone, Serialize)]
pub struct QueuedView {
    /// Message id (as in `status`).
    pub id: i64,
    /// The contact.
    pub contact: String,
    /// Length in bytes.
    pub bytes: usize,
    /// Fragments it was cut into.
    pub fragments: usize,
}

/// A received message, for display.
#[derive(Debug, Clone, Serialize)]
pub struct InboxView {
    /// Message id.
    pub id: i64,
    /// The sender's name.
    pub from: String,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
    /// The round whose read completed it.
    pub round: u64,
    /// When it was stored (unix ms).
    pub received_ms: u64,
}

/// An outgoing message's state.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    /// Message id.
    pub id: i64,
    /// The contact.
    pub contact: String,
    /// `queued`, `sent` (every fragment sent at least once) or `delivered` (all acknowledged).
    pub state: &'static str,
    /// Fragments in total.
    pub fragments: u32,
    /// Fragments sent at least once.
    pub fragments_sent: u32,
    /// Fragments acknowledged.
    pub fragments_acked: u32,
    /// Round in which delivery completed.
    pub delivered_round: Option<u64>,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
}

/// A server link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkView {
    /// `A` or `B`.
    pub server: String,
    /// The last exchange succeeded.
    pub up: bool,
    /// The last error, while down.
    pub last_error: Option<String>,
    /// Last success (unix ms).
    pub last_ok_ms: Option<u64>,
}

/// One round, as this client took part in it.
#[derive(Debug, Clone, Serialize)]
pub struct RoundView {
    /// The round.
    pub round: u64,
    /// Receipt from A held.
    pub receipt_a: bool,
    /// Receipt from B held.
    pub receipt_b: bool,
    /// Commit acknowledged by A.
    pub committed_a: bool,
    /// Commit acknowledged by B.
    pub committed_b: bool,
    /// Reads answered and processed (or given up).
    pub reads_done: bool,
    /// Whether our write is in the round's published accepted set (`None`: not known).
    pub accepted: Option<bool>,
    /// Final (receipts deleted).
    pub is_final: bool,
}

/// `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// The current round on this machine's clock.
    pub current_round: Option<u64>,
    /// Server links.
    pub links: Vec<LinkView>,
    /// Outgoing messages.
    pub messages: Vec<MessageView>,
    /// Recent rounds, newest first.
    pub rounds: Vec<RoundView>,
}

/// What `sync_rounds` / `run` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Rounds taken part in.
    pub rounds: u64,
    /// First and last round.
    pub first_round: Option<u64>,
    /// Last round.
    pub last_round: Option<u64>,
    /// Writes whose commits both servers acknowledged.
    pub committed: u64,
    /// Messages received.
    pub received: u64,
}

/// An opened client home.
#[derive(Debug)]
pub struct Client {
    home: PathBuf,
    config: ClientConfig,
    params: protocol::Params,
    identity: Identity,
    store: Store,
    sched: Schedule,
    clock: RoundClock,
    slot_len: usize,
    servers: Option<Servers>,
    rng: OsRandom,
}

/// The result of one round's network exchange, handed to [`Client::finish_round`].
#[derive(Debug, Default)]
struct RoundResult {
    receipts: [Option<Vec<u8>>; 2],
    committed: [bool; 2],
    answers: [Option<Vec<Vec<u8>>>; 2],
    /// Why a server counts as down this round (transport failures only).
    down: [Option<String>; 2],
}

impl RoundResult {
    /// Records a failed request: a transport failure marks the link down; a refusal or a bad
    /// answer is logged (the server is up, and the round goes on the same way).
    fn failed(&mut self, server: ServerId, e: Error) {
        match e {
            Error::Net { .. } => {
                self.down[server.index()].get_or_insert(e.to_string());
            }
            other => tracing::warn!(server = server.name(), error = %other, "request failed"),
        }
    }
}

impl Client {
    /// Creates a new client in `home`: checks both servers' parameters, registers the new
    /// account with both, then writes the key file, the store and the config.
    pub async fn init(home: &Path, mut opts: InitOptions) -> Result<Self, Error> {
        for f in [CONFIG_FILE, KEY_FILE, STORE_FILE] {
            let p = home.join(f);
            if p.exists() {
                return Err(Error::AlreadyInitialised(p));
            }
        }
        ensure_private_dir(home)?;
        let servers = Servers::connect(&opts.config)?;
        let infos = servers.info_both().await?;
        let announced = wire::agreed_params(&infos, &opts.config)?;
        match &opts.config.params {
            Some(p) if !opts.params_from_servers => {
                if *p != announced {
                    return Err(Error::ParamsMismatch(
                        "the servers announce parameters other than the pinned ones".into(),
                    ));
                }
            }
            _ => opts.config.params = Some(announced),
        }
        let params = *opts.config.params()?;
        check_params(&params)?;
        let mut rng = OsRandom;
        let identity = Identity::generate(&mut rng);
        servers
            .register_both(&identity, &params, opts.invite.as_deref())
            .await?;
        identity.save(&home.join(KEY_FILE))?;
        let store = Store::create(&home.join(STORE_FILE))?;
        opts.config.save(&home.join(CONFIG_FILE))?;
        drop(store);
        let mut client = Self::open(home)?;
        client.servers = Some(servers);
        Ok(client)
    }

    /// Opens an initialised home.
    pub fn open(home: &Path) -> Result<Self, Error> {
        let config = ClientConfig::load(&home.join(CONFIG_FILE))?;
        let params = *config.params()?;
        check_params(&params)?;
        let identity = Identity::load(&home.join(KEY_FILE))?;
        let store = Store::open(&home.join(STORE_FILE))?;
        Ok(Self {
            home: home.to_path_buf(),
            sched: config.schedule()?,
            clock: config.clock()?,
            slot_len: params.slot_len as usize,
            params,
            config,
            identity,
            store,
            servers: None,
            rng: OsRandom,
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The pinned parameters.
    pub fn params(&self) -> &protocol::Params {
        &self.params
    }

    /// Identity summary (contact code, keys).
    pub fn whoami(&self) -> WhoAmI {
        WhoAmI {
            contact_code: self.identity.contact_code(),
            public_key: hex::encode(self.identity.public_key()),
            account: hex::encode(self.identity.account_public().as_bytes()),
        }
    }

    /// The contact code.
    pub fn contact_code(&self) -> String {
        self.identity.contact_code()
    }

    fn contact_view(
        &self,
        c: &crate::store::Contact,
        ratchet: Option<&crate::ratchet::Ratchet>,
    ) -> ContactView {
        let epoch = ratchet.map_or(0, |r| r.epoch);
        ContactView {
            name: c.name.clone(),
            index: c.index,
            contact_code: encode_code(&c.public_key),
            safety_number: safety_number(&self.identity.public_key(), &c.public_key),
            unacked_fragments: c.send.unacked(),
            epoch,
            epoch_since_round: ratchet.filter(|_| epoch > 0).map(|r| r.established),
        }
    }

    /// Adds a contact from its code at a random free index; returns it with the safety number.
    pub fn add_contact(&mut self, name: &str, code: &str) -> Result<ContactView, Error> {
        check_name(name)?;
        let key = decode_code(code)?;
        // Derive once now: refuses our own code and low-order keys before anything is stored.
        crate::session::PairKeys::derive(self.identity.x25519_secret(), &key)?;
        let c_max = self.sched.c_max;
        let Self { store, rng, .. } = self;
        let contact = store.with_tx(|tx| {
            let contacts = tx.contacts()?;
            let free: Vec<usize> = (0..c_max)
                .filter(|i| contacts.iter().all(|c| c.index != *i))
                .collect();
            if free.is_empty() {
                return Err(Error::ContactsFull(c_max));
            }
            // A uniformly random free index.
            let index = free[random_below(rng, free.len() as u64) as usize];
            let contact = tx.add_contact(name, &key, index, now_ms())?;
            // The first frame to the contact carries our ephemeral key (forward secrecy).
            engine::start_pair(tx, &contact, rng)?;
            Ok(contact)
        })?;
        Ok(self.contact_view(&contact, None))
    }

    /// All contacts.
    pub fn contacts(&mut self) -> Result<Vec<ContactView>, Error> {
        let list = self.store.with_tx(|tx| {
            tx.contacts()?
                .into_iter()
                .map(|c| {
                    let r = tx.ratchet(c.id)?;
                    Ok((c, r))
                })
                .collect::<Result<Vec<_>, Error>>()
        })?;
        Ok(list
            .iter()
            .map(|(c, r)| self.contact_view(c, r.as_ref()))
            .collect())
    }

    /// Renames a contact.
    pub fn rename_contact(&mut self, old: &str, new: &str) -> Result<(), Error> {
        check_name(new)?;
        self.store.with_tx(|tx| tx.rename_contact(old, new))
    }

    /// Removes a contact and its queued messages (and its session keys).
    pub fn remove_contact(&mut self, name: &str) -> Result<(), Error> {
        self.store
            .with_tx(|tx| tx.remove_contact(name).map(|_| ()))?;
        self.scrub();
        Ok(())
    }

    /// Truncates the store's write-ahead log so deleted keys leave the files (see
    /// [`Store::scrub`]). A failure is logged; the next round tries again.
    fn scrub(&mut self) {
        match self.store.scrub() {
            Ok(true) => {}
            Ok(false) => tracing::debug!("store checkpoint busy; retried after the next round"),
            Err(e) => tracing::warn!(error = %e, "store checkpoint failed"),
        }
    }

    /// Queues a message of any length (up to 1 MiB) to a contact.
    pub fn send(&mut self, name: &str, body: &[u8]) -> Result<QueuedView, Error> {
        if body.len() > MAX_MESSAGE {
            return Err(delivery::DeliveryError::TooLong(body.len()).into());
        }
        let cap = frame::data_capacity(self.slot_len)?;
        let frags = delivery::fragment(body, cap)?;
        let (id, contact) = self.store.with_tx(|tx| {
            let c = tx.contact_by_name(name)?;
            let id = tx.queue_message(&c, body, &frags, now_ms())?;
            Ok((id, c.name))
        })?;
        Ok(QueuedView {
            id,
            contact,
            bytes: body.len(),
            fragments: frags.len(),
        })
    }

    /// Received messages, oldest first.
    pub fn inbox(&mut self) -> Result<Vec<InboxView>, Error> {
        Ok(self
            .store
            .with_tx(|tx| tx.inbox())?
            .into_iter()
            .map(|m| InboxView {
                id: m.id,
                from: m.sender,
                text: String::from_utf8_lossy(&m.body).into_owned(),
                round: m.round,
                received_ms: m.received_ms,
            })
            .collect())
    }

    /// Delivery state, rounds and links.
    pub fn status(&mut self) -> Result<StatusView, Error> {
        let (out, rounds, links) = self
            .store
            .with_tx(|tx| Ok((tx.outgoing()?, tx.recent_rounds(16)?, tx.links()?)))?;
        let messages = out
            .into_iter()
            .map(|m| MessageView {
                id: m.id,
                contact: m.contact,
                state: if m.fragments_acked >= m.fragments {
                    "delivered"
                } else if m.fragments_sent >= m.fragments {
                    "sent"
                } else {
                    "queued"
                },
                fragments: m.fragments,
                fragments_sent: m.fragments_sent,
                fragments_acked: m.fragments_acked,
                delivered_round: m.delivered_round,
                text: String::from_utf8_lossy(&m.body).into_owned(),
            })
            .collect();
        let mut link_views: Vec<LinkView> = ["A", "B"]
            .iter()
            .map(|s| LinkView {
                server: (*s).to_string(),
                up: false,
                last_error: Some("no exchange yet".into()),
                last_ok_ms: None,
            })
            .collect();
        for l in links {
            if let Some(v) = link_views.iter_mut().find(|v| v.server == l.server) {
                v.up = l.up;
                v.last_error = l.last_error;
                v.last_ok_ms = l.last_ok_ms;
            }
        }
        Ok(StatusView {
            current_round: self.clock.round_at(now_ms()),
            links: link_views,
            messages,
            rounds: rounds
                .into_iter()
                .map(|r| RoundView {
                    round: r.round,
                    receipt_a: r.receipt_a.is_some() || r.is_final && r.committed_b,
                    receipt_b: r.receipt_b.is_some() || r.is_final && r.committed_a,
                    committed_a: r.committed_a,
                    committed_b: r.committed_b,
                    reads_done: r.reads_done,
                    accepted: r.accepted,
                    is_final: r.is_final,
                })
                .collect(),
        })
    }

    fn servers(&mut self) -> Result<&Servers, Error> {
        if self.servers.is_none() {
            self.servers = Some(Servers::connect(&self.config)?);
        }
        self.servers
            .as_ref()
            .ok_or_else(|| Error::Config("servers not configured".into()))
    }

    /// Asks both servers for their `Info` and refuses to go on if either announces
    /// parameters other than the pinned ones. A server that cannot be reached is recorded as
    /// down (the daemon keeps trying it every round).
    pub async fn check_servers(&mut self) -> Result<(), Error> {
        let params = self.params;
        let results = self.servers()?.info_each().await;
        for (i, r) in results.into_iter().enumerate() {
            let s = ServerId::from_index(i);
            let name = s.name();
            match r {
                Ok(info) => {
                    if let Err(e) = wire::check_info(s, &info, &self.config, Some(&params)) {
                        let msg = e.to_string();
                        self.store
                            .with_tx(|tx| tx.set_link(name, Some(&msg), now_ms()))?;
                        return Err(e);
                    }
                    self.store.with_tx(|tx| tx.set_link(name, None, now_ms()))?;
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.store
                        .with_tx(|tx| tx.set_link(name, Some(&msg), now_ms()))?;
                }
            }
        }
        Ok(())
    }

    /// Takes part in the next `n` rounds (every write, commit and read at the pinned offsets),
    /// then returns.
    pub async fn sync_rounds(&mut self, n: u64) -> Result<SyncReport, Error> {
        let mut report = SyncReport::default();
        for _ in 0..n {
            // Recomputed each time: a round whose send time has passed is skipped, never sent late.
            let round = self.first_round()?;
            self.one_round(round, &mut report).await?;
        }
        Ok(report)
    }

    /// Takes part in every round until `shutdown` completes.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<SyncReport, Error> {
        let mut report = SyncReport::default();
        tokio::pin!(shutdown);
        loop {
            let round = self.first_round()?;
            tokio::select! {
                r = self.one_round(round, &mut report) => r?,
                () = &mut shutdown => return Ok(report),
            }
        }
    }

    /// The round to take part in next: the current round if it was built before a restart and
    /// its writes are still open (its stored bytes are then resent unchanged), else the next
    /// round whose send time is still ahead.
    fn first_round(&mut self) -> Result<u64, Error> {
        let now = now_ms();
        if let Some(cur) = self.clock.round_at(now)
            && now < self.clock.commit_at(cur)
            && let Some(rec) = self.store.with_tx(|tx| tx.round(cur))?
            && !rec.reads_done
        {
            return Ok(cur);
        }
        // A little slack so the write is built and persisted before its send time.
        Ok(self.clock.next_sendable(now.saturating_add(20)))
    }

    async fn one_round(&mut self, round: u64, report: &mut SyncReport) -> Result<(), Error> {
        self.recover(round)?;
        let rec = self.prepare_round(round)?;
        let result = self.exchange(round, &rec).await?;
        let links_down = [result.down[0].is_some(), result.down[1].is_some()];
        let received = self.finish_round(round, &rec, result)?;
        tracing::info!(
            round,
            committed_both = received.0,
            received = received.1,
            a_down = links_down[0],
            b_down = links_down[1],
            "round done"
        );
        let budget = self
            .clock
            .send_at(round + 1)
            .saturating_sub(self.clock.round_ms / 20);
        self.finalize_old_rounds(budget).await?;
        report.rounds += 1;
        report.first_round.get_or_insert(round);
        report.last_round = Some(round);
        report.received += received.1;
        if received.0 {
            report.committed += 1;
        }
        Ok(())
    }

    /// Rounds built before a crash whose time has passed: their reads are lost (the round is
    /// over; a later round retransmits), their write stays persisted until final.
    fn recover(&mut self, before: u64) -> Result<(), Error> {
        self.store.with_tx(|tx| {
            for r in tx.rounds_with_pending_reads()? {
                if r < before {
                    tx.set_reads_done(r, 0)?;
                }
            }
            Ok(())
        })
    }

    /// Builds round `round` in one transaction, committed before anything is sent; or reloads
    /// it unchanged if it was built before (a restart inside the round).
    pub fn prepare_round(&mut self, round: u64) -> Result<RoundRecord, Error> {
        let Self {
            store,
            identity,
            sched,
            slot_len,
            params,
            rng,
            ..
        } = self;
        store.with_tx(|tx| {
            if let Some(rec) = tx.round(round)? {
                return Ok(rec);
            }
            let ctx = engine::Ctx {
                identity,
                sched,
                slot_len: *slot_len,
                heal_every: HEAL_EVERY,
            };
            let write = engine::build_slot_write(tx, ctx, round, rng)?;
            let mut request_id = [0u8; 16];
            rng.fill(&mut request_id);
            let [write_a, write_b] =
                wire::write_requests(params, identity, round, &request_id, &write, rng)?;
            let plan = engine::plan_reads(tx, ctx, round, rng)?;
            let (read_a, read_b, plan_bytes) = match (&plan, sched.array_round(round)) {
                (Some(plan), Some(array)) => {
                    let [a, b] = wire::read_requests(params, identity, round, array, plan, rng)?;
                    (Some(a), Some(b), Some(engine::encode_plan(plan)))
                }
                _ => (None, None, None),
            };
            let rec = RoundRecord {
                round,
                request_id: request_id.to_vec(),
                target_contact: write.target,
                write_a: Some(write_a),
                write_b: Some(write_b),
                read_a,
                read_b,
                read_plan: plan_bytes,
                created_ms: now_ms(),
                ..RoundRecord::default()
            };
            tx.insert_round(&rec)?;
            if plan.is_none() {
                tx.set_reads_done(round, 0)?;
            }
            Ok(rec)
        })
    }

    /// The network part of a round. What is sent, and when, depends only on the round, the
    /// persisted request bytes and the receipts held (which a commit must carry), never on
    /// what reads decrypted.
    async fn exchange(&mut self, round: u64, rec: &RoundRecord) -> Result<RoundResult, Error> {
        let clock = self.clock;
        let params = self.params;
        let array_round = self.sched.array_round(round);
        // Take the connections out of `self` so the identity and config stay borrowable.
        let servers = match self.servers.take() {
            Some(s) => s,
            None => Servers::connect(&self.config)?,
        };
        let result = exchange_with(
            &servers,
            &self.config,
            &self.identity,
            &params,
            clock,
            array_round,
            rec,
        )
        .await;
        self.servers = Some(servers);
        result
    }

    /// Persists the round's outcome: receipts, commits, links, and the read answers (one
    /// transaction). Returns (committed to both, messages received).
    fn finish_round(
        &mut self,
        round: u64,
        rec: &RoundRecord,
        result: RoundResult,
    ) -> Result<(bool, u64), Error> {
        let plan = rec
            .read_plan
            .as_deref()
            .map(engine::decode_plan)
            .transpose()?;
        let slots: Option<Vec<Option<Vec<u8>>>> = match (&result.answers, &plan) {
            ([Some(a), Some(b)], Some(plan)) if a.len() == plan.len() && b.len() == plan.len() => {
                Some(
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| {
                            (x.len() == y.len())
                                .then(|| x.iter().zip(y).map(|(p, q)| p ^ q).collect())
                        })
                        .collect(),
                )
            }
            _ => None,
        };
        let Self {
            store,
            identity,
            sched,
            slot_len,
            rng,
            ..
        } = self;
        let now = now_ms();
        let stats = store.with_tx(|tx| {
            for i in 0..2 {
                if let Some(r) = &result.receipts[i] {
                    tx.set_receipt(round, i, r)?;
                }
                if result.committed[i] {
                    tx.set_committed(round, i)?;
                }
                tx.set_link(
                    ServerId::from_index(i).name(),
                    result.down[i].as_deref(),
                    now,
                )?;
            }
            let stats = match (&plan, &slots) {
                (Some(plan), Some(slots)) => {
                    let ctx = engine::Ctx {
                        identity,
                        sched,
                        slot_len: *slot_len,
                        heal_every: HEAL_EVERY,
                    };
                    engine::process_reads(tx, ctx, round, plan, slots, now, rng)?
                }
                _ => engine::ReadStats::default(),
            };
            tx.set_reads_done(round, stats.decrypted)?;
            Ok(stats)
        })?;
        // This round's write and reads deleted keys: push them out of the log as well.
        self.scrub();
        Ok((
            result.committed[0] && result.committed[1],
            u64::from(stats.delivered_messages),
        ))
    }

    /// Rounds past their publish deadline: learn whether our write was accepted (from the
    /// servers' signed published set), then delete receipts and request bytes. Stops at
    /// `budget_until` so the next round is not delayed; what is left waits for the next call.
    async fn finalize_old_rounds(&mut self, budget_until: u64) -> Result<(), Error> {
        let clock = self.clock;
        let pending: Vec<RoundRecord> = self.store.with_tx(|tx| {
            let now = now_ms();
            let mut v = Vec::new();
            for r in tx.unfinished_rounds()? {
                if clock.final_at(r) <= now
                    && let Some(rec) = tx.round(r)?
                {
                    v.push(rec);
                }
            }
            Ok(v)
        })?;
        for rec in pending {
            if now_ms() >= budget_until {
                break;
            }
            let config = self.config.clone();
            let servers = self.servers()?;
            let accepted = servers
                .accepted(&config, rec.round, &rec.request_id, budget_until)
                .await;
            if accepted.is_none() && now_ms() < clock.final_at(rec.round) + 10 * clock.round_ms {
                // Not known yet (a server is down or slow): ask again later, for a while.
                continue;
            }
            self.store
                .with_tx(|tx| tx.finalize_round(rec.round, accepted))?;
        }
        Ok(())
    }
}

/// One request of a round: to whom, what, when, and until when it may be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The server.
    pub server: ServerId,
    /// The HTTP path.
    pub path: &'static str,
    /// The exact body.
    pub body: Vec<u8>,
    /// When it is sent (unix ms).
    pub at_ms: u64,
    /// Retries (same bytes) stop here.
    pub deadline_ms: u64,
}

/// The writes of a round: both halves at `send_offset`, retried until writes close.
pub fn write_phase(clock: &RoundClock, rec: &RoundRecord) -> Vec<Outgoing> {
    let (at, until) = (clock.send_at(rec.round), clock.commit_at(rec.round));
    [(ServerId::A, &rec.write_a), (ServerId::B, &rec.write_b)]
        .into_iter()
        .filter_map(|(server, body)| {
            body.as_ref().map(|b| Outgoing {
                server,
                path: protocol::paths::WRITE,
                body: b.clone(),
                at_ms: at,
                deadline_ms: until,
            })
        })
        .collect()
}

/// The commits and reads of a round, all at `write_close`: commits retried until the cutoff,
/// reads until shortly before the next round's send time.
pub fn commit_read_phase(
    clock: &RoundClock,
    rec: &RoundRecord,
    commits: [Vec<u8>; 2],
) -> Vec<Outgoing> {
    let round = rec.round;
    let at = clock.commit_at(round);
    let cutoff = clock.cutoff_at(round);
    let read_deadline = clock
        .send_at(round + 1)
        .saturating_sub(clock.round_ms / 10)
        .max(cutoff);
    let [ca, cb] = commits;
    let mut out = vec![
        Outgoing {
            server: ServerId::A,
            path: protocol::paths::COMMIT,
            body: ca,
            at_ms: at,
            deadline_ms: cutoff,
        },
        Outgoing {
            server: ServerId::B,
            path: protocol::paths::COMMIT,
            body: cb,
            at_ms: at,
            deadline_ms: cutoff,
        },
    ];
    for (server, body) in [(ServerId::A, &rec.read_a), (ServerId::B, &rec.read_b)] {
        if let Some(b) = body {
            out.push(Outgoing {
                server,
                path: protocol::paths::READ,
                body: b.clone(),
                at_ms: at,
                deadline_ms: read_deadline,
            });
        }
    }
    out
}

async fn send_all(servers: &Servers, reqs: &[Outgoing]) -> Vec<Result<Vec<u8>, Error>> {
    let futs = reqs.iter().map(|o| async move {
        sleep_until(o.at_ms).await;
        servers
            .post_until(o.server, o.path, &o.body, o.deadline_ms)
            .await
    });
    futures_join_all(futs).await
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// One round's exchange with both servers (see [`Client::exchange`]).
#[allow(clippy::too_many_arguments)]
async fn exchange_with(
    servers: &Servers,
    config: &ClientConfig,
    identity: &Identity,
    params: &protocol::Params,
    clock: RoundClock,
    array_round: Option<u64>,
    rec: &RoundRecord,
) -> Result<RoundResult, Error> {
    let mut result = RoundResult::default();
    // 1-2. Both halves of the write, in parallel.
    let writes = write_phase(&clock, rec);
    for (o, r) in writes.iter().zip(send_all(servers, &writes).await) {
        let i = o.server.index();
        match r.and_then(|body| wire::parse_receipt(config, identity, o.server, rec, &body)) {
            Ok(receipt) => result.receipts[i] = Some(receipt),
            Err(e) => result.failed(o.server, e),
        }
    }
    // 3-4. Commits (each carrying the other server's receipt) and reads, in parallel.
    let commits = wire::commit_requests(params, identity, rec, &result.receipts)?;
    let second = commit_read_phase(&clock, rec, commits);
    for (o, r) in second.iter().zip(send_all(servers, &second).await) {
        let i = o.server.index();
        let outcome = r.and_then(|body| {
            if o.path == protocol::paths::COMMIT {
                wire::parse_commit_ack(o.server, rec, &body).map(|()| result.committed[i] = true)
            } else {
                let ar =
                    array_round.ok_or_else(|| Error::Corrupt("read before round lag".into()))?;
                wire::parse_read_answer(params, o.server, ar, &body)
                    .map(|ans| result.answers[i] = Some(ans))
            }
        });
        if let Err(e) = outcome {
            result.failed(o.server, e);
        }
    }
    Ok(result)
}

/// Sleeps until unix time `t_ms` (returns at once if it has passed).
pub async fn sleep_until(t_ms: u64) {
    let now = now_ms();
    if t_ms > now {
        tokio::time::sleep(std::time::Duration::from_millis(t_ms - now)).await;
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name.chars().all(|c| !c.is_control())
        && name.trim() == name;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// The contact code as a QR code drawn with Unicode half blocks (upper case, so the QR code
/// uses the compact alphanumeric mode; codes decode case-insensitively).
pub fn qr_text(code: &str) -> Result<String, Error> {
    let qr = qrcode::QrCode::new(code.to_ascii_uppercase().as_bytes())
        .map_err(|e| Error::Config(format!("QR code: {e}")))?;
    Ok(qr
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use dpf::SeededRandom;
    use protocol::Role;

    fn server_cfg(port: u16, key: u8) -> ServerConfig {
        let sk = protocol::signing_key_from_bytes(&[key; 32]);
        ServerConfig {
            address: format!("127.0.0.1:{port}"),
            cert_pin: format!("sha256:{}", hex::encode([key; 32])),
            signing_key: hex::encode(protocol::public_key(&sk)),
        }
    }

    /// A client home made without servers (for tests of everything before the network).
    fn offline_client(dir: &Path, seed: u8) -> Result<Client, Error> {
        let params = protocol::Params::demo(now_ms().saturating_sub(3_600_000));
        let config = ClientConfig::from_parts(server_cfg(1, 1), server_cfg(2, 2), Some(params));
        ensure_private_dir(dir)?;
        Identity::generate(&mut SeededRandom::new([seed; 32])).save(&dir.join(KEY_FILE))?;
        drop(Store::create(&dir.join(STORE_FILE))?);
        config.save(&dir.join(CONFIG_FILE))?;
        Client::open(dir)
    }

    type Shape = (ServerId, &'static str, usize, u64, u64);

    fn shapes(reqs: &[Outgoing]) -> Vec<Shape> {
        reqs.iter()
            .map(|o| (o.server, o.path, o.body.len(), o.at_ms, o.deadline_ms))
            .collect()
    }

    fn tempdir() -> Result<tempfile::TempDir, Error> {
        tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))
    }

    #[test]
    fn receipts_and_answers_do_not_change_what_is_sent() -> Result<(), Error> {
        let (d1, d2) = (tempdir()?, tempdir()?);
        let mut c1 = offline_client(d1.path(), 1)?;
        let mut c2 = offline_client(d2.path(), 2)?;
        // Same table shape and queue for both: a contact at index 1 with a long message.
        for (c, peer) in [(&mut c1, [9u8; 32]), (&mut c2, [10u8; 32])] {
            let pk = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(peer));
            c.store
                .with_tx(|tx| tx.add_contact("peer", pk.as_bytes(), 1, 0).map(|_| ()))?;
            c.send("peer", &[b'x'; 3000])?;
        }
        let clock = c1.clock;
        let first = clock.round_at(now_ms()).unwrap_or(0) + 1;
        let mut garbage = SeededRandom::new([3; 32]);
        let mut write_sizes = std::collections::HashSet::new();
        for round in first..first + 12 {
            let r1 = c1.prepare_round(round)?;
            let r2 = c2.prepare_round(round)?;
            assert_eq!(
                c1.prepare_round(round)?,
                r1,
                "a built round is reloaded unchanged"
            );
            let (w1, w2) = (write_phase(&clock, &r1), write_phase(&clock, &r2));
            assert_eq!(shapes(&w1), shapes(&w2));
            write_sizes.extend(w1.iter().map(|o| o.body.len()));
            // c1 got both receipts, c2 none.
            let receipts1 = [
                Some(fake_receipt(&c1, &r1, Role::A)),
                Some(fake_receipt(&c1, &r1, Role::B)),
            ];
            let p1 = commit_read_phase(
                &clock,
                &r1,
                wire::commit_requests(&c1.params, &c1.identity, &r1, &receipts1)?,
            );
            let p2 = commit_read_phase(
                &clock,
                &r2,
                wire::commit_requests(&c2.params, &c2.identity, &r2, &[None, None])?,
            );
            assert_eq!(shapes(&p1), shapes(&p2));
            assert_eq!(p1.len(), 4, "two commits and two reads");
            // c1's answers are corrupted garbage, c2's never came.
            let k = c1.sched.reads;
            let mut answers = |_: usize| -> Vec<Vec<u8>> {
                (0..k)
                    .map(|_| {
                        let mut v = vec![0u8; c1.slot_len];
                        garbage.fill(&mut v);
                        v
                    })
                    .collect()
            };
            let res1 = RoundResult {
                receipts: receipts1,
                committed: [true, true],
                answers: [Some(answers(0)), Some(answers(1))],
                down: [None, None],
            };
            let res2 = RoundResult {
                down: [Some("unreachable".into()), Some("unreachable".into())],
                ..RoundResult::default()
            };
            c1.finish_round(round, &r1, res1)?;
            c2.finish_round(round, &r2, res2)?;
        }
        assert_eq!(write_sizes.len(), 1, "every write has the same size");
        let s2 = c2.status()?;
        assert!(s2.links.iter().all(|l| !l.up), "down links show in status");
        // Nothing was ever acknowledged by the peer: fragments went out up to the window, and
        // the message is not delivered.
        let m = &s2.messages[0];
        assert!(m.fragments_sent > 0 && m.fragments_sent <= m.fragments);
        assert_eq!(m.fragments_acked, 0);
        assert_ne!(m.state, "delivered");
        Ok(())
    }

    fn party(i: usize) -> dpf::Party {
        if i == 0 { dpf::Party::A } else { dpf::Party::B }
    }

    fn corrupt(e: impl std::fmt::Display) -> Error {
        Error::Corrupt(e.to_string())
    }

    /// What the two servers compute for a set of writes (after the audit): each evaluates its
    /// halves into a share array; the published array is the XOR of the two.
    fn publish(params: &protocol::Params, recs: &[&RoundRecord]) -> Result<Vec<u8>, Error> {
        let l = params.slot_len as usize;
        let n = usize::try_from(params.n_slots()).map_err(corrupt)?;
        let mut shares = [vec![0u8; n * l], vec![0u8; n * l]];
        for rec in recs {
            for (i, body) in [&rec.write_a, &rec.write_b].into_iter().enumerate() {
                let body = body.as_deref().ok_or_else(|| corrupt("no write"))?;
                let req: protocol::WriteRequest = protocol::codec::decode(body).map_err(corrupt)?;
                let key =
                    dpf::WriteKey::decode(&req.key, params.domain_bits, l).map_err(corrupt)?;
                dpf::write_accumulate(&mut shares[i], l, &[&key], party(i));
            }
        }
        let [mut a, b] = shares;
        a.iter_mut().zip(&b).for_each(|(x, y)| *x ^= y);
        Ok(a)
    }

    /// Each server's answers to a client's reads of `array`.
    fn answer(
        params: &protocol::Params,
        rec: &RoundRecord,
        array: &[u8],
    ) -> Result<[Option<Vec<Vec<u8>>>; 2], Error> {
        let mut out = [None, None];
        for (i, body) in [&rec.read_a, &rec.read_b].into_iter().enumerate() {
            let Some(body) = body else { continue };
            let req: protocol::ReadRequest = protocol::codec::decode(body).map_err(corrupt)?;
            let keys = req
                .keys
                .iter()
                .map(|k| dpf::ReadKey::decode(k, params.domain_bits).map_err(corrupt))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&dpf::ReadKey> = keys.iter().collect();
            out[i] = Some(dpf::pir_answer(
                array,
                params.slot_len as usize,
                &refs,
                party(i),
            ));
        }
        Ok(out)
    }

    #[test]
    fn two_clients_exchange_messages_through_the_real_dpf() -> Result<(), Error> {
        let (da, db) = (tempdir()?, tempdir()?);
        let mut alice = offline_client(da.path(), 11)?;
        let mut bob = offline_client(db.path(), 12)?;
        let (code_a, code_b) = (alice.contact_code(), bob.contact_code());
        let sa = alice.add_contact("bob", &code_b)?;
        let sb = bob.add_contact("alice", &code_a)?;
        assert_eq!(
            (sa.epoch, sa.epoch_since_round),
            (0, None),
            "bootstrap keys at first"
        );
        assert_eq!(sa.safety_number, sb.safety_number);
        let long: String = (0..700)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        alice.send("bob", long.as_bytes())?;
        alice.send("bob", "second".as_bytes())?;
        bob.send("alice", "hi alice".as_bytes())?;
        let params = alice.params;
        let zero = vec![0u8; usize::try_from(params.array_bytes()).map_err(corrupt)?];
        let mut arrays: std::collections::HashMap<u64, Vec<u8>> = Default::default();
        let first = alice.clock.round_at(now_ms()).unwrap_or(0) + 1;
        for round in first..first + 48 {
            let recs = [alice.prepare_round(round)?, bob.prepare_round(round)?];
            arrays.insert(round, publish(&params, &[&recs[0], &recs[1]])?);
            for (c, rec) in [(&mut alice, &recs[0]), (&mut bob, &recs[1])] {
                let array = c
                    .sched
                    .array_round(round)
                    .and_then(|ar| arrays.get(&ar))
                    .unwrap_or(&zero);
                let result = RoundResult {
                    committed: [true, true],
                    answers: answer(&params, rec, array)?,
                    ..RoundResult::default()
                };
                c.finish_round(round, rec, result)?;
            }
        }
        let got_b: Vec<(String, String)> =
            bob.inbox()?.into_iter().map(|m| (m.from, m.text)).collect();
        assert_eq!(
            got_b,
            vec![
                ("alice".to_string(), long),
                ("alice".to_string(), "second".to_string())
            ]
        );
        let got_a: Vec<String> = alice.inbox()?.into_iter().map(|m| m.text).collect();
        assert_eq!(got_a, vec!["hi alice".to_string()]);
        let st = alice.status()?;
        assert!(
            st.messages.iter().all(|m| m.state == "delivered"),
            "{:?}",
            st.messages
        );
        // The pair left the bootstrap keys: both computed the first epoch's root, deleted
        // their ephemeral secrets and switched both directions.
        for (c, peer) in [(&mut alice, "bob"), (&mut bob, "alice")] {
            let identity = &c.identity;
            let (_, r) = c.store.with_tx(|tx| {
                let contact = tx.contact_by_name(peer)?;
                engine::load_pair(tx, identity, &contact)
            })?;
            assert_eq!(r.epoch, 1);
            assert!(r.secrets().len() == 1 && r.block.is_none(), "step complete");
            assert!(r.incoming.next.is_none() && r.outgoing.next.is_none());
            // ... and `contacts` (the CLI's list) shows it.
            let view = c.contacts()?;
            assert_eq!(view[0].epoch, 1);
            assert_eq!(view[0].epoch_since_round, Some(r.established));
        }
        Ok(())
    }

    fn fake_receipt(c: &Client, rec: &RoundRecord, role: Role) -> Vec<u8> {
        let mut request_id = [0u8; 16];
        request_id.copy_from_slice(&rec.request_id);
        protocol::codec::encode(&protocol::Receipt {
            role,
            account: c.identity.account_public().to_bytes(),
            round: rec.round,
            request_id,
            half_hash: [7; 32],
            signature: [8; 64],
        })
    }

    #[test]
    fn contacts_fill_up_to_c_max_at_distinct_indexes() -> Result<(), Error> {
        let d = tempdir()?;
        let mut c = offline_client(d.path(), 5)?;
        let own = c.contact_code();
        assert!(matches!(c.add_contact("me", &own), Err(Error::SelfContact)));
        for i in 0..4u8 {
            let pk = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([20 + i; 32]));
            let v = c.add_contact(&format!("p{i}"), &encode_code(pk.as_bytes()))?;
            assert_eq!(v.safety_number.len(), 71);
        }
        let pk = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([30; 32]));
        assert!(matches!(
            c.add_contact("p4", &encode_code(pk.as_bytes())),
            Err(Error::ContactsFull(4))
        ));
        let mut idx: Vec<usize> = c.contacts()?.iter().map(|v| v.index).collect();
        idx.sort_unstable();
        assert_eq!(idx, vec![0, 1, 2, 3]);
        c.rename_contact("p1", "bob")?;
        c.remove_contact("p2")?;
        assert_eq!(c.contacts()?.len(), 3);
        assert!(matches!(c.send("p2", b"x"), Err(Error::UnknownContact(_))));
        let q = c.send("bob", &[b'y'; 1000])?;
        assert_eq!(q.fragments, 1000usize.div_ceil(frame::data_capacity(256)?));
        assert!(matches!(c.send("bob", b""), Err(Error::Delivery(_))));
        Ok(())
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("bob").is_ok());
        assert!(check_name("Bob Smith").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(" bob").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn qr_code_renders_the_contact_code() -> Result<(), Error> {
        let code = encode_code(&[7; 32]);
        let text = qr_text(&code)?;
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 10);
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count())
        );
        Ok(())
    }
}
