use crate::support::{ok_stdout, sandbox_or_skip};

#[test]
#[ignore = "probe"]
fn probe_systemd_text_forms() {
    let Some(sb) = sandbox_or_skip() else { return };
    for (unit, cpu, mem, high, tasks) in [
        ("ds01-student-alice.slice", "96000000", "103079215104", "92341796864", "12288"),
        ("ds01-student-bob.slice", "18446744073709551615", "18446744073709551615", "18446744073709551615", "18446744073709551615"),
        ("ds01-student-carol.slice", "1505000", "1000", "1536", "1"),
    ] {
        let out = sb.busctl(&["call","org.freedesktop.systemd1","/org/freedesktop/systemd1","org.freedesktop.systemd1.Manager","SetUnitProperties","sba(sv)",unit,"false","8",
            "CPUQuotaPerSecUSec","t",cpu,"MemoryMax","t",mem,"MemoryHigh","t",high,"TasksMax","t",tasks,
            "CPUAccounting","b","true","MemoryAccounting","b","true","TasksAccounting","b","true","IOAccounting","b","true"]);
        ok_stdout("set", out).unwrap();
        let dir = sb.host_path(&format!("/etc/systemd/system.control/{unit}.d"));
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            println!("==== {}\n{}", p.display(), std::fs::read_to_string(&p).unwrap());
        }
    }
    let out = sb.systemctl(&["show", "ds01-student-alice.slice", "-p", "DropInPaths,FragmentPath,MemoryMax,CPUQuotaPerSecUSec"]);
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
