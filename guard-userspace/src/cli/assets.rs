//! Man pages (`guard(8)` and one per subcommand) and bash, zsh and fish completions,
//! generated from the clap definitions: nothing about the command line is written twice.

use std::{fs, path::Path};

use clap::CommandFactory as _;

use crate::{api::Failure, cli::Cli};

/// Writes `DIR/man/guard.8`, `DIR/man/guard-SUBCOMMAND.8`, and
/// `DIR/completions/{guard.bash,_guard,guard.fish}`.
pub fn generate(dir: &Path) -> Result<(), Failure> {
    let fail = |what: &str, e: std::io::Error| Failure::Runtime(format!("{what}: {e}"));
    let man = dir.join("man");
    let completions = dir.join("completions");
    fs::create_dir_all(&man).map_err(|e| fail("creating the man directory", e))?;
    fs::create_dir_all(&completions).map_err(|e| fail("creating the completions directory", e))?;
    let mut command = Cli::command();
    command.build();
    let page = |cmd: clap::Command, name: &str| -> Result<(), Failure> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .section("8")
            .render(&mut out)
            .map_err(|e| fail("rendering a man page", e))?;
        fs::write(man.join(format!("{name}.8")), out).map_err(|e| fail("writing a man page", e))
    };
    page(command.clone(), "guard")?;
    for sub in command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("guard-{}", sub.get_name());
        page(sub.clone().name(name.clone()), &name)?;
    }
    for (shell, file) in [
        (clap_complete::Shell::Bash, "guard.bash"),
        (clap_complete::Shell::Zsh, "_guard"),
        (clap_complete::Shell::Fish, "guard.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command, "guard", &mut out);
        fs::write(completions.join(file), out).map_err(|e| fail("writing a completion", e))?;
    }
    Ok(())
}
