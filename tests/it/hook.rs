use crate::support::sandbox_or_skip;
#[test]
#[ignore]
fn zz_explore() {
    let Some(sb) = sandbox_or_skip() else { return };
    std::fs::write("/work/main/target/explore.pid", format!("{}\n", sb.pid())).unwrap();
    let mut n = 0;
    while std::path::Path::new("/work/main/target/explore.pid").exists() && n < 3000 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        n += 1;
    }
}
