//! `kpr serve`: the long-running GitOps controller (placeholder; filled in by the serve work).

use crate::cli::{CliError, GlobalArgs};
use crate::config::FileConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}

pub async fn serve(
    _global: &GlobalArgs,
    _file: FileConfig,
    _args: ServeArgs,
) -> Result<u8, CliError> {
    Err(CliError::Usage("serve is not implemented yet".into()))
}
