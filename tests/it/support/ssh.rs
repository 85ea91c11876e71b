//! Real ssh into the test VM: a key made for the test, root's authorized key in the guest, and
//! an ssh configuration whose host aliases `vm0`, `vm1`, ... all reach the guest's sshd through
//! the port QEMU forwards to it ([`Vm::ssh_address`]). The product's `DS01_SSH` override points
//! at [`SshAccess::program`], a wrapper that is plain `ssh -F <that configuration>`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use super::scratch::Scratch;
use super::vm::Vm;

pub struct SshAccess {
    /// Holds the key, the configuration, known_hosts and the wrapper; removed on drop.
    dir: Scratch,
    /// The host aliases, all of them the VM: as many hosts as a fleet test wants.
    pub hosts: Vec<String>,
}

impl SshAccess {
    /// `aliases` host names for `vm`; starts the guest's sshd on its network.
    pub fn new(vm: &Vm, aliases: usize) -> Result<SshAccess, String> {
        let dir = Scratch::new("ssh");
        let key = dir.join("id_ed25519");
        let made = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "ds01-slices-test",
                "-f",
            ])
            .arg(&key)
            .status()
            .map_err(|e| format!("ssh-keygen: {e}"))?;
        if !made.success() {
            return Err(format!("ssh-keygen failed: {made}"));
        }
        let public = fs::read_to_string(dir.join("id_ed25519.pub")).map_err(|e| e.to_string())?;
        let mut config = String::new();
        let mut hosts = Vec::new();
        let (address, port) = vm.ssh_address();
        for i in 0..aliases {
            let alias = format!("vm{i}");
            config.push_str(&format!(
                "Host {alias}\n  HostName {address}\n  Port {port}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n",
                key.display(),
                dir.join("known_hosts").display(),
            ));
            hosts.push(alias);
        }
        vm.network_up()?;
        let installed = vm.sh(
            &format!(
                "set -e; install -d -m 700 /root/.ssh && printf '%s\\n' '{}' >/root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys && systemctl start ssh.service",
                public.trim()
            ),
            std::time::Duration::from_secs(60),
        )?;
        if installed.code != Some(0) {
            return Err(format!(
                "installing the key and starting sshd in the guest: {installed}"
            ));
        }
        fs::write(dir.join("ssh_config"), config).map_err(|e| e.to_string())?;
        let wrapper = dir.join("ssh");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec ssh -F {} \"$@\"\n",
                dir.join("ssh_config").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Ok(SshAccess { dir, hosts })
    }

    /// `ssh` with this access's configuration: for `DS01_SSH`.
    pub fn program(&self) -> PathBuf {
        self.dir.join("ssh")
    }

    /// [`SshAccess::program`] with OpenSSH's connection sharing, as many admins configure it:
    /// the first ssh to a host becomes a master (`ControlMaster=auto`) that stays in the
    /// background for `persist` seconds after its session (`ControlPersist`), its socket in
    /// `control` (a short path: a Unix socket's is at most 107 bytes); later ones go through it.
    pub fn persistent_program(&self, control: &std::path::Path, persist: u32) -> PathBuf {
        let wrapper = self.dir.join("ssh-persist");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec ssh -F {} -oControlMaster=auto -oControlPath={}/%C -oControlPersist={persist} \"$@\"\n",
                self.config().display(),
                control.display()
            ),
        )
        .expect("writing the ssh wrapper");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .expect("making the ssh wrapper executable");
        wrapper
    }

    /// The ssh configuration (`ssh -F`) that defines [`SshAccess::hosts`].
    pub fn config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }
}
