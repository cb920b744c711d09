//! vde_switch's management console (`-M SOCK`, stdin, `-f` rc files, `load`):
//! the command table, its `help` text and output formats, checked against the
//! real vde_switch 2.3.2 (vde-protocol.md §6; vde-2 `consmgmt.c`, `port.c`,
//! `hash.c`).
//!
//! Pure: [`Console::execute`] takes one command line and returns the text to
//! send (without the `\nvde$ ` prompt) plus an [`Action`] for the daemon
//! (close the session, shut down, load a file, close an endpoint's sockets).
//! Commands of vde_switch that this switch does not implement (VLAN creation,
//! tagged ports, FSTP, plugins, debug subscriptions) answer `1038 Function not
//! implemented` once their arguments pass vde_switch's own checks (bad ones get
//! its 1022/1006/1098 answers); the read-only VLAN and FSTP views answer for
//! the one VLAN there is, as vde_switch does with FSTP off.

use std::fmt::Write as _;
use std::time::Duration;

use crate::net::switch::{EndpointId, Switch, SwitchError};
use crate::net::wire::MacAddr;

/// The banner a new management connection receives (then the prompt).
pub const BANNER: &str =
    "VDE switch V.2.3.2\n(C) Virtual Square Team (coord. R. Davoli) 2005,2006,2007 - GPLv2\n";
/// The prompt after every command.
pub const PROMPT: &str = "\nvde$ ";
/// What `logout` and `shutdown` send before closing.
pub const END_OF_SESSION: &str = "9999 END OF SESSION";

/// What the daemon knows that the console prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleInfo {
    pub pid: u32,
    /// The switch MAC (`00:ff:` + 4 bytes), used by `showinfo` and `fstp/showinfo`.
    pub mac: MacAddr,
    /// `-M` socket path and its mode.
    pub mgmt: Option<(String, u32)>,
    /// The resolved ctl directory and the ctl socket mode.
    pub ctl_dir: String,
    pub ctl_mode: u32,
}

/// What the daemon must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// `logout`: close this session.
    Logout,
    /// `shutdown`: close the session and stop the switch.
    Shutdown,
    /// `load PATH`: run the file's lines, echoing `vde[PATH]: <line>` before each.
    Load(String),
    /// `port/epclose`: the endpoint was removed from the core; close its sockets.
    CloseEndpoint(EndpointId),
}

/// Resolves user and group names (I/O lives in the daemon; tests use a fixed map).
pub trait Names {
    fn user_name(&self, uid: u32) -> String;
    fn group_name(&self, gid: u32) -> String;
    fn user_id(&self, name: &str) -> Option<u32>;
    fn group_id(&self, name: &str) -> Option<u32>;
}

/// Names from the system's passwd and group databases.
pub struct SystemNames;

impl Names for SystemNames {
    fn user_name(&self, uid: u32) -> String {
        nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string())
    }
    fn group_name(&self, gid: u32) -> String {
        nix::unistd::Group::from_gid(gid.into())
            .ok()
            .flatten()
            .map(|g| g.name)
            .unwrap_or_else(|| gid.to_string())
    }
    fn user_id(&self, name: &str) -> Option<u32> {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }
    fn group_id(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// How a command prints: data commands wrap their lines in
/// `0000 DATA END WITH '.'` … `.` even when they fail.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Menu,
    Plain,
    Data,
}

/// vde_switch 2.3.2's `help` table as it prints it, in its registration order
/// (columns 18 and 15 wide): the one list of command names and syntaxes.
const HELP_TABLE: &str = "\
ds                 ============    DATA SOCKET MENU
ds/showinfo                        show ds info
help               [arg]           Help (limited to arg when specified)
logout                             logout from this mgmt terminal
shutdown                           shutdown of the switch
showinfo                           show switch version and info
load               path            load a configuration script
debug              ============    DEBUG MENU
debug/list                         list debug categories
debug/add          dbgpath         enable debug info for a given category
debug/del          dbgpath         disable debug info for a given category
plugin             ============    PLUGINS MENU
plugin/list                        list plugins
plugin/add         library         load a plugin
plugin/del         name            unload a plugin
hash               ============    HASH TABLE MENU
hash/showinfo                      show hash info
hash/setsize       N               change hash size
hash/setgcint      N               change garbage collector interval
hash/setexpire     N               change hash entries expire time
hash/setminper     N               minimum persistence time
hash/print                         print the hash table
hash/find          MAC [VLAN]      MAC lookup
fstp               ============    FAST SPANNING TREE MENU
fstp/showinfo                      show fstp info
fstp/setfstp       0/1             Fast spanning tree protocol 1=ON 0=OFF
fstp/setedge       VLAN PORT 1/0   Define an edge port for a vlan 1=Y 0=N
fstp/bonus         VLAN PORT COST  set the port bonus for a vlan
fstp/print         [N]             print fst data for the defined vlan
port               ============    PORT STATUS MENU
port/showinfo                      show port info
port/setnumports   N               set the number of ports
port/sethub        0/1             1=HUB 0=switch
port/setvlan       N VLAN          set port VLAN (untagged)
port/createauto                    create a port with an automatically allocated id (inactive|notallocatable)
port/create        N               create the port N (inactive|notallocatable)
port/remove        N               remove the port N
port/allocatable   N 0/1           Is the port allocatable as unnamed? 1=Y 0=N
port/setuser       N user          access control: set user
port/setgroup      N user          access control: set group
port/epclose       N ID            remove the endpoint port N/id ID
port/resetcounter  [N]             reset the port (N) counters
port/print         [N]             print the port/endpoint table
port/allprint      [N]             print the port/endpoint table (including inactive port)
vlan               ============    VLAN MANAGEMENT MENU
vlan/create        N               create the VLAN with tag N
vlan/remove        N               remove the VLAN with tag N
vlan/addport       N PORT          add port to the vlan N (tagged)
vlan/delport       N PORT          add port to the vlan N (tagged)
vlan/print         [N]             print the list of defined vlan
vlan/allprint      [N]             print the list of defined vlan (including inactive port)
";

/// The commands that answer in a `0000 DATA END WITH '.'` block (vde-2's
/// `WITHFILE`).
const DATA_COMMANDS: &[&str] = &[
    "ds/showinfo",
    "help",
    "showinfo",
    "debug/list",
    "plugin/list",
    "hash/showinfo",
    "hash/print",
    "hash/find",
    "fstp/showinfo",
    "fstp/setfstp",
    "fstp/print",
    "port/showinfo",
    "port/createauto",
    "port/print",
    "port/allprint",
    "vlan/print",
    "vlan/allprint",
];

/// (path, syntax, help, kind) of every [`HELP_TABLE`] line.
fn commands() -> impl Iterator<Item = (&'static str, &'static str, &'static str, Kind)> {
    HELP_TABLE.lines().map(|l| {
        let path = l.get(..18).unwrap_or(l).trim_end();
        let syntax = l.get(19..34).unwrap_or_default().trim_end();
        let help = l.get(35..).unwrap_or_default();
        let kind = if syntax == "============" {
            Kind::Menu
        } else if DATA_COMMANDS.contains(&path) {
            Kind::Data
        } else {
            Kind::Plain
        };
        (path, syntax, help, kind)
    })
}

const DEBUG_LIST: &str = "CATEGORY               TAG STATUS HELP
------------           --- ------ ----
hash/+                 011 OFF    hash: new element
hash/-                 012 OFF    hash: discarded element
fstp/status            044 OFF    fstp: status change
fstp/root              045 OFF    fstp: rootswitch/port change
fstp/+                 041 OFF    fstp: port becomes active
fstp/-                 042 OFF    fstp: port becomes inactive
port/+                 021 OFF    new port
port/-                 022 OFF    closed port
port/descr             023 OFF    set port description
port/ep/+              031 OFF    new endpoint
port/ep/-              032 OFF    closed endpoint
";

/// C's `atoi`: leading blanks, optional sign, decimal digits; 0 otherwise.
pub fn c_atoi(s: &str) -> i64 {
    let s = s.trim_start_matches([' ', '\t', '\n']);
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits: String = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .take(18)
        .collect();
    let v = digits.parse::<i64>().unwrap_or(0);
    if neg {
        -v
    } else {
        v
    }
}

/// C's `sscanf("%i")` on one word: decimal, `0x` hex or leading-0 octal.
fn c_scan_i(word: &str) -> Option<i64> {
    let (neg, w) = match word.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, word.strip_prefix('+').unwrap_or(word)),
    };
    let (radix, digits) = if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        (16, h)
    } else if w.len() > 1 && w.starts_with('0') {
        (8, &w[1..])
    } else {
        (10, w)
    };
    let valid: String = digits
        .chars()
        .take_while(|c| c.is_digit(radix))
        .take(15)
        .collect();
    if valid.is_empty() && !(radix == 8 && digits.is_empty()) && w != "0" {
        return None;
    }
    let v = i64::from_str_radix(&valid, radix).unwrap_or(0);
    Some(if neg { -v } else { v })
}

/// `sscanf(arg, "%i %i")`: the first `n` integer words.
fn scan_ints(arg: &str, n: usize) -> Option<Vec<i64>> {
    let v: Vec<i64> = arg
        .split_ascii_whitespace()
        .take(n)
        .map_while(c_scan_i)
        .collect();
    (v.len() == n).then_some(v)
}

/// The optional VLAN argument of `vlan/print` and `fstp/print`: none, or one
/// that reads as 0 (`atoi`), is VLAN 0; 1..4094 do not exist here.
fn vlan_arg(arg: &str) -> Result<(), i32> {
    match c_atoi(arg) {
        0 => Ok(()),
        v if v > 0 && v < 4095 => Err(libc::ENXIO),
        _ => Err(libc::EINVAL),
    }
}

fn errno_line(errno: i32) -> String {
    if errno == 0 {
        "1000 Success\n".to_string()
    } else {
        format!(
            "1{errno:03} {}\n",
            nix::errno::Errno::from_raw(errno).desc()
        )
    }
}

/// Parses `hash/find`'s `MAC [VLAN]` (`:` or `.` separated hex, like sscanf `%x`).
fn parse_find(arg: &str) -> Option<(MacAddr, u16)> {
    let sep = if arg.contains(':') { ':' } else { '.' };
    let mut words = arg.split_ascii_whitespace();
    let mac_word = words.next()?;
    let parts: Vec<&str> = mac_word.split(sep).collect();
    if parts.len() < 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        let hex: String = p.chars().take_while(char::is_ascii_hexdigit).collect();
        // %x into an int, then stored in an unsigned char: keep the low byte.
        *b = u64::from_str_radix(hex.get(hex.len().saturating_sub(8)..)?, 16).ok()? as u8;
    }
    let vlan = words.next().map(c_atoi).unwrap_or(0);
    Some((MacAddr(mac), u16::try_from(vlan).unwrap_or(0)))
}

/// The console: executes command lines against a switch.
pub struct Console<'a> {
    pub switch: &'a mut Switch,
    pub info: &'a ConsoleInfo,
    pub names: &'a dyn Names,
    /// Time since the switch started (uptime, hash ages).
    pub now: Duration,
}

impl Console<'_> {
    /// Runs one command line (one `read()` of a management connection, or one
    /// rc-file line). Returns the output without the prompt.
    pub fn execute(&mut self, line: &str) -> (String, Action) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            return (String::new(), Action::None);
        }
        let Some((path, _, _, kind)) =
            commands().find(|(path, _, _, kind)| *kind != Kind::Menu && line.starts_with(path))
        else {
            return (errno_line(libc::ENOSYS), Action::None);
        };
        let arg = line[path.len()..].trim_start_matches([' ', '\t']);
        let mut data = String::new();
        let (errno, action) = self.run(path, arg, &mut data);
        let mut out = String::new();
        match path {
            "logout" => return (END_OF_SESSION.to_string(), Action::Logout),
            "shutdown" => return (END_OF_SESSION.to_string(), Action::Shutdown),
            _ => {}
        }
        if kind == Kind::Data {
            out.push_str("0000 DATA END WITH '.'\n");
            out.push_str(&data);
            out.push_str(".\n");
        }
        out.push_str(&errno_line(errno));
        (out, action)
    }

    fn run(&mut self, path: &str, arg: &str, out: &mut String) -> (i32, Action) {
        let err = |e: SwitchError| e.errno();
        let res = |r: Result<(), SwitchError>| r.err().map(err).unwrap_or(0);
        let sw = &mut *self.switch;
        let errno = match path {
            "ds/showinfo" => {
                let _ = writeln!(out, "ctl dir {}", self.info.ctl_dir);
                let _ = writeln!(out, "std mode 0{:03o}", self.info.ctl_mode);
                0
            }
            "help" => {
                out.push_str("COMMAND PATH       SYNTAX          HELP\n");
                out.push_str("------------       --------------  ------------\n");
                for (l, (p, _, _, _)) in HELP_TABLE.lines().zip(commands()) {
                    if p.starts_with(arg) {
                        let _ = writeln!(out, "{l}");
                    }
                }
                0
            }
            "logout" | "shutdown" => 0,
            "showinfo" => {
                out.push_str(BANNER);
                out.push('\n');
                let _ = writeln!(
                    out,
                    "pid {} MAC {} uptime {}",
                    self.info.pid,
                    self.info.mac,
                    self.now.as_secs()
                );
                if let Some((path, mode)) = &self.info.mgmt {
                    let _ = writeln!(out, "mgmt {path} perm 0{mode:03o}");
                }
                0
            }
            "load" => return (0, Action::Load(arg.to_string())),
            "debug/list" => {
                out.push_str(DEBUG_LIST);
                0
            }
            "plugin/list" => {
                out.push_str("NAME                   HELP\n------------           ----\n");
                libc::ENOENT
            }
            "hash/showinfo" => {
                let c = sw.config();
                let _ = writeln!(out, "Hash size {}", c.hash_size);
                let _ = writeln!(out, "GC interval {} secs", c.gc_interval);
                let _ = writeln!(out, "GC expire {} secs", c.expire);
                let _ = writeln!(out, "Min persistence {} secs", c.min_persistence);
                0
            }
            "hash/setsize" => res(sw.set_hash_size(c_atoi(arg)).map(|_| ())),
            "hash/setgcint" => {
                sw.set_timers(Some(c_atoi(arg).max(0) as u64), None, None);
                0
            }
            "hash/setexpire" => {
                sw.set_timers(None, Some(c_atoi(arg).max(0) as u64), None);
                0
            }
            "hash/setminper" => {
                sw.set_timers(None, None, Some(c_atoi(arg).max(0) as u64));
                0
            }
            "hash/print" => {
                sw.tick(self.now);
                let now = self.now.as_secs();
                for (bucket, e) in sw.table() {
                    let _ = writeln!(
                        out,
                        "Hash: {bucket:04} Addr: {} VLAN {:04} to port: {:03}  age {} secs",
                        e.mac,
                        e.vlan,
                        e.port,
                        now.saturating_sub(e.last_seen)
                    );
                }
                0
            }
            "hash/find" => match parse_find(arg) {
                None => libc::EINVAL,
                Some((mac, vlan)) => match sw.lookup(mac, vlan) {
                    None => libc::ENODEV,
                    Some(e) => {
                        // vde_switch 2.3.2 prints the port number plus one here.
                        let _ = writeln!(
                            out,
                            "Hash: {:04} Addr: {} VLAN {:04} to port: {:03}  age {} secs",
                            sw.bucket(mac, vlan),
                            e.mac,
                            e.vlan,
                            u32::from(e.port) + 1,
                            self.now.as_secs().saturating_sub(e.last_seen)
                        );
                        0
                    }
                },
            },
            "fstp/showinfo" => {
                let _ = writeln!(out, "MAC {} Priority 32768 (0x8000)", self.info.mac);
                out.push_str("FSTP=false\n");
                0
            }
            "fstp/setfstp" if c_atoi(arg) == 0 => 0,
            "port/showinfo" => {
                let c = sw.config();
                let _ = writeln!(out, "Numports={}", c.numports);
                let _ = writeln!(out, "HUB={}", c.hub);
                out.push_str("counters=true\n");
                0
            }
            "port/setnumports" => res(sw.set_numports(c_atoi(arg))),
            "port/sethub" => {
                sw.set_hub(c_atoi(arg) != 0);
                0
            }
            "port/setvlan" => match scan_ints(arg, 2) {
                None => libc::EINVAL,
                Some(v) => {
                    let (port, vlan) = (v[0], v[1]);
                    if !(0..=4095).contains(&vlan)
                        || port < 0
                        || port >= i64::from(sw.config().numports)
                    {
                        libc::EINVAL
                    } else if vlan != 0 || sw.port(port as u16).is_none() {
                        // Only VLAN 0 exists here (`vlan/create` is not implemented).
                        libc::ENXIO
                    } else {
                        0
                    }
                }
            },
            "port/createauto" => match sw.create_port_auto() {
                Ok(n) => {
                    let _ = writeln!(out, "Port {n:04}");
                    0
                }
                Err(e) => e.errno(),
            },
            "port/create" => res(sw.create_port(c_atoi(arg))),
            "port/remove" => res(sw.remove_port(c_atoi(arg))),
            "port/allocatable" => match scan_ints(arg, 2) {
                None => libc::EINVAL,
                Some(v) => res(sw.set_allocatable(v[0], v[1] != 0)),
            },
            "port/setuser" | "port/setgroup" => {
                let mut words = arg.split_ascii_whitespace();
                let port = words.next().and_then(c_scan_i);
                let who = words.next();
                match (port, who) {
                    (Some(port), Some(who)) => {
                        let id = if path == "port/setuser" {
                            self.names.user_id(who)
                        } else {
                            self.names.group_id(who)
                        };
                        let id = match id {
                            Some(id) => Ok(Some(id)),
                            None if who.starts_with(|c: char| c.is_ascii_digit()) => {
                                Ok(Some(c_atoi(who) as u32))
                            }
                            None if who == "NONE" || who == "ANY" => Ok(None),
                            None => Err(libc::EINVAL),
                        };
                        match id {
                            Err(e) => e,
                            Ok(id) if path == "port/setuser" => {
                                res(sw.set_access(port, Some(id), None))
                            }
                            Ok(id) => res(sw.set_access(port, None, Some(id))),
                        }
                    }
                    _ => libc::EINVAL,
                }
            }
            "port/epclose" => match scan_ints(arg, 2) {
                None => libc::EINVAL,
                Some(v) => {
                    let (Ok(port), Ok(id)) = (u16::try_from(v[0]), u32::try_from(v[1])) else {
                        return (libc::EINVAL, Action::None);
                    };
                    match sw.close_endpoint(port, id) {
                        Ok(()) => return (0, Action::CloseEndpoint(id)),
                        Err(e) => e.errno(),
                    }
                }
            },
            "port/resetcounter" => res(sw.reset_counters((!arg.is_empty()).then(|| c_atoi(arg)))),
            "port/print" | "port/allprint" => {
                let all = path == "port/allprint";
                if arg.is_empty() {
                    let ports: Vec<u16> = sw.ports().map(|(n, _)| n).collect();
                    for n in ports {
                        self.print_port(n, all, out);
                    }
                    0
                } else {
                    let n = c_atoi(arg);
                    if n < 0 || n >= i64::from(sw.config().numports) {
                        libc::EINVAL
                    } else if self.print_port(n as u16, all, out) {
                        0
                    } else {
                        libc::ENXIO
                    }
                }
            }
            "vlan/print" | "vlan/allprint" => match vlan_arg(arg) {
                Err(e) => e,
                Ok(()) => {
                    let all = path == "vlan/allprint";
                    out.push_str("VLAN 0000\n");
                    for (n, p) in sw.ports() {
                        if all || p.is_active() {
                            let status = if p.is_active() {
                                "Forwarding"
                            } else {
                                "Learning"
                            };
                            let _ = writeln!(
                                out,
                                " -- Port {n:04} tagged=0 active={} status={status}",
                                u8::from(p.is_active())
                            );
                        }
                    }
                    0
                }
            },
            "fstp/print" => match vlan_arg(arg) {
                Err(e) => e,
                Ok(()) => {
                    // FSTP off, one VLAN: this switch is its root and every
                    // active port is designated (vde-2 fstp.c `fstprintactive`).
                    out.push_str("FST DATA VLAN 0000 ROOTSWITCH FSTP IS DISABLED\n");
                    let _ = writeln!(out, " ++ root 80:00:{}", self.info.mac);
                    out.push_str(" ++ designated ff:ff:ff:ff:ff:ff:ff:ff\n");
                    let _ = writeln!(
                        out,
                        " ++ rootport 0000 cost 0 age {} bonusport 0000 bonuscost 0",
                        self.now.as_secs()
                    );
                    for (n, p) in sw.ports() {
                        if p.is_active() {
                            let _ = writeln!(
                                out,
                                " -- Port {n:04} tagged=0 portcost=20000000 role=Designated"
                            );
                        }
                    }
                    0
                }
            },
            // Only VLAN 0 exists and every port is its untagged member; what
            // would change that (or FSTP) is not implemented: valid requests
            // answer ENOSYS after the same argument checks as vde_switch.
            "vlan/create" => {
                let v = c_atoi(arg);
                if v > 0 && v < 4095 {
                    libc::ENOSYS
                } else {
                    libc::EINVAL
                }
            }
            "vlan/remove" => match c_atoi(arg) {
                0 if sw.ports().next().is_some() => libc::EADDRINUSE,
                0 => libc::ENOSYS,
                v if v > 0 && v < 4095 => libc::ENXIO,
                _ => libc::EINVAL,
            },
            "vlan/addport" | "vlan/delport" => match scan_ints(arg, 2) {
                None => libc::EINVAL,
                Some(v) => match (v[0], v[1]) {
                    (vlan, _) if !(0..4095).contains(&vlan) => libc::EINVAL,
                    (0, port) if port < 0 || port >= i64::from(sw.config().numports) => {
                        libc::EINVAL
                    }
                    (0, port) => match (path, sw.port(port as u16)) {
                        ("vlan/addport", _) => libc::ENOSYS,
                        // Its untagged VLAN cannot be removed as a tagged one.
                        (_, Some(_)) => libc::EADDRINUSE,
                        (_, None) => libc::ENXIO,
                    },
                    _ => libc::ENXIO,
                },
            },
            "fstp/setedge" | "fstp/bonus" => match scan_ints(arg, 3) {
                None => libc::EINVAL,
                Some(v) => match (v[0], v[1]) {
                    (vlan, _) if !(0..4095).contains(&vlan) => libc::EINVAL,
                    (0, port) if port < 0 || port >= i64::from(sw.config().numports) => {
                        libc::EINVAL
                    }
                    (0, _) => libc::ENOSYS,
                    _ => libc::ENXIO,
                },
            },
            _ => libc::ENOSYS,
        };
        (errno, Action::None)
    }

    /// `print_port`: false when the port does not exist or is inactive (and `all` is false).
    fn print_port(&self, n: u16, all: bool, out: &mut String) -> bool {
        let Some(p) = self.switch.port(n) else {
            return false;
        };
        if !all && !p.is_active() {
            return false;
        }
        let user =
            |u: Option<u32>| u.map_or_else(|| "NONE".to_string(), |u| self.names.user_name(u));
        let group =
            |g: Option<u32>| g.map_or_else(|| "NONE".to_string(), |g| self.names.group_name(g));
        let _ = writeln!(
            out,
            "Port {n:04} untagged_vlan={:04} {}ACTIVE - {}Unnamed Allocatable",
            p.untagged_vlan,
            if p.is_active() { "" } else { "IN" },
            if p.allocatable { "" } else { "NOT " }
        );
        let _ = writeln!(
            out,
            " Current User: {} Access Control: (User: {} - Group: {})",
            if p.is_active() {
                user(p.cur_user)
            } else {
                "NONE".to_string()
            },
            user(p.user),
            group(p.group)
        );
        let c = p.counters;
        let _ = writeln!(
            out,
            " IN:  pkts {:10}          bytes {:20}",
            c.in_pkts, c.in_bytes
        );
        let _ = writeln!(
            out,
            " OUT: pkts {:10}          bytes {:20}",
            c.out_pkts, c.out_bytes
        );
        for e in &p.endpoints {
            let descr = if e.description.is_empty() {
                "no endpoint description"
            } else {
                e.description.as_str()
            };
            let _ = writeln!(
                out,
                "  -- endpoint ID {:04} module {:<12}: {descr}",
                e.id, "unix prog"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::switch::{PortRequest, SwitchConfig};
    use proptest::prelude::*;

    struct FixedNames;
    impl Names for FixedNames {
        fn user_name(&self, uid: u32) -> String {
            if uid == 0 {
                "root".into()
            } else {
                uid.to_string()
            }
        }
        fn group_name(&self, gid: u32) -> String {
            if gid == 0 {
                "root".into()
            } else {
                gid.to_string()
            }
        }
        fn user_id(&self, name: &str) -> Option<u32> {
            (name == "root").then_some(0)
        }
        fn group_id(&self, name: &str) -> Option<u32> {
            (name == "root").then_some(0)
        }
    }

    fn info() -> ConsoleInfo {
        ConsoleInfo {
            pid: 31854,
            mac: "00:ff:9f:47:2b:7d".parse().unwrap(),
            mgmt: Some(("/tmp/nettry/sw1.mgmt".into(), 0o600)),
            ctl_dir: "/tmp/nettry/sw1".into(),
            ctl_mode: 0o600,
        }
    }

    /// A session recorded from the real vde_switch 2.3.2 (one vde_plug on port 1
    /// with ctl fd 3, uptime 1 s): each command and its exact output.
    #[test]
    fn session_matches_real_vde_switch() {
        let mut sw = Switch::new(SwitchConfig::default());
        sw.add_endpoint(
            PortRequest::Any,
            3,
            Some(0),
            "MyDescr user=root pid=31870",
            Duration::ZERO,
        )
        .unwrap();
        let info = info();
        let mut con = Console {
            switch: &mut sw,
            info: &info,
            names: &FixedNames,
            now: Duration::from_secs(1),
        };
        let cases: &[(&str, &str)] = &[
            ("ds/showinfo", "0000 DATA END WITH '.'\nctl dir /tmp/nettry/sw1\nstd mode 0600\n.\n1000 Success\n"),
            ("showinfo", "0000 DATA END WITH '.'\nVDE switch V.2.3.2\n(C) Virtual Square Team (coord. R. Davoli) 2005,2006,2007 - GPLv2\n\npid 31854 MAC 00:ff:9f:47:2b:7d uptime 1\nmgmt /tmp/nettry/sw1.mgmt perm 0600\n.\n1000 Success\n"),
            ("port/showinfo", "0000 DATA END WITH '.'\nNumports=32\nHUB=false\ncounters=true\n.\n1000 Success\n"),
            ("hash/showinfo", "0000 DATA END WITH '.'\nHash size 128\nGC interval 2 secs\nGC expire 100 secs\nMin persistence 3 secs\n.\n1000 Success\n"),
            ("port/print", "0000 DATA END WITH '.'\nPort 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n Current User: root Access Control: (User: NONE - Group: NONE)\n IN:  pkts          0          bytes                    0\n OUT: pkts          0          bytes                    0\n  -- endpoint ID 0003 module unix prog   : MyDescr user=root pid=31870\n.\n1000 Success\n"),
            ("port/print 99", "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"),
            ("port/print 5", "0000 DATA END WITH '.'\n.\n1006 No such device or address\n"),
            ("port/create 5", "1000 Success\n"),
            ("port/allprint 5", "0000 DATA END WITH '.'\nPort 0005 untagged_vlan=0000 INACTIVE - NOT Unnamed Allocatable\n Current User: NONE Access Control: (User: NONE - Group: NONE)\n IN:  pkts          0          bytes                    0\n OUT: pkts          0          bytes                    0\n.\n1000 Success\n"),
            ("port/create 5", "1017 File exists\n"),
            ("port/remove 5", "1000 Success\n"),
            ("port/remove 1", "1098 Address already in use\n"),
            ("hash/print", "0000 DATA END WITH '.'\n.\n1000 Success\n"),
            ("hash/find 00:11:22:33:44:55", "0000 DATA END WITH '.'\n.\n1019 No such device\n"),
            ("hash/find zz", "0000 DATA END WITH '.'\n.\n1022 Invalid argument\n"),
            ("vlan/print", "0000 DATA END WITH '.'\nVLAN 0000\n -- Port 0001 tagged=0 active=1 status=Forwarding\n.\n1000 Success\n"),
            ("fstp/showinfo", "0000 DATA END WITH '.'\nMAC 00:ff:9f:47:2b:7d Priority 32768 (0x8000)\nFSTP=false\n.\n1000 Success\n"),
            ("plugin/list", "0000 DATA END WITH '.'\nNAME                   HELP\n------------           ----\n.\n1002 No such file or directory\n"),
            ("bogus", "1038 Function not implemented\n"),
            ("", ""),
            ("#c", ""),
            ("helpfoo", "0000 DATA END WITH '.'\nCOMMAND PATH       SYNTAX          HELP\n------------       --------------  ------------\n.\n1000 Success\n"),
            ("port/setnumports 0", "1022 Invalid argument\n"),
            ("port/setnumports 3", "1000 Success\n"),
            ("port/sethub 1", "1000 Success\n"),
            ("port/showinfo", "0000 DATA END WITH '.'\nNumports=3\nHUB=true\ncounters=true\n.\n1000 Success\n"),
            ("port/epclose 1 99", "1006 No such device or address\n"),
            ("port/resetcounter", "1000 Success\n"),
            ("hash/setsize 100", "1000 Success\n"),
            ("hash/showinfo", "0000 DATA END WITH '.'\nHash size 128\nGC interval 2 secs\nGC expire 100 secs\nMin persistence 3 secs\n.\n1000 Success\n"),
            ("port/setvlan 1 7", "1006 No such device or address\n"),
            ("logout", "9999 END OF SESSION"),
        ];
        for (cmd, want) in cases {
            let (got, _) = con.execute(&format!("{cmd}\n"));
            assert_eq!(got, *want, "command {cmd:?}");
        }
        let (help, _) = con.execute("help");
        assert_eq!(help.lines().count(), 2 + commands().count() + 3);
        assert!(
            help.contains("vlan/delport       N PORT          add port to the vlan N (tagged)\n")
        );
        assert_eq!(con.execute("shutdown").1, Action::Shutdown);
        assert_eq!(con.execute("load /x/y").1, Action::Load("/x/y".into()));
    }

    #[test]
    fn hash_print_and_find_off_by_one() {
        let mut sw = Switch::new(SwitchConfig::default());
        sw.add_endpoint(PortRequest::Any, 3, None, "", Duration::ZERO)
            .unwrap();
        sw.add_endpoint(PortRequest::Any, 4, None, "", Duration::ZERO)
            .unwrap();
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0xfe, 0xfd, 0, 0, 0, 1, 8, 6]);
        sw.forward(1, &f, Duration::ZERO);
        let info = info();
        let mut con = Console {
            switch: &mut sw,
            info: &info,
            names: &FixedNames,
            now: Duration::from_secs(5),
        };
        let (out, _) = con.execute("hash/print");
        assert!(
            out.contains("Addr: fe:fd:00:00:00:01 VLAN 0000 to port: 001  age 5 secs\n"),
            "{out}"
        );
        let (out, _) = con.execute("hash/find fe.fd.0.0.0.1");
        assert!(out.contains("to port: 002  age 5 secs\n"), "{out}");
    }

    #[test]
    fn scanning_like_c() {
        assert_eq!(c_atoi("  42abc"), 42);
        assert_eq!(c_atoi("x"), 0);
        assert_eq!(c_atoi("-7"), -7);
        assert_eq!(scan_ints("0x10 010", 2), Some(vec![16, 8]));
        assert_eq!(scan_ints("1", 2), None);
        assert_eq!(scan_ints("a b", 2), None);
    }

    proptest! {
        #[test]
        fn any_line_never_panics(line in ".{0,140}") {
            let mut sw = Switch::new(SwitchConfig::default());
            let _ = sw.add_endpoint(PortRequest::Any, 3, None, "", Duration::ZERO);
            let info = info();
            let mut con = Console { switch: &mut sw, info: &info, names: &FixedNames, now: Duration::from_secs(1) };
            let _ = con.execute(&line);
            for cmd in ["port/print ", "hash/find ", "port/epclose ", "port/setuser ", "port/allocatable ", "port/setnumports ", "hash/setsize ", "port/create ", "port/setvlan "] {
                let _ = con.execute(&format!("{cmd}{line}"));
            }
        }
    }
}
