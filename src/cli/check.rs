//! `tokenkeeper check`: validate the configuration and the secrets it names.

use std::path::Path;

use tokenkeeper::config::{self, Loaded};

use super::config_error::{print_config_error, print_warnings};
use super::{EXIT_CONFIG, EXIT_OK};
use tokenkeeper::status::plural;

pub(crate) fn check(path: &Path) -> u8 {
    match config::load(path) {
        Ok(Loaded { config, warnings }) => {
            print_warnings(path, &warnings);
            say!(
                "{}: ok ({} scope set{}, {} provider{})",
                path.display(),
                config.sets.len(),
                plural(config.sets.len()),
                config.providers.len(),
                plural(config.providers.len()),
            );
            EXIT_OK
        }
        Err(e) => {
            print_config_error(&e);
            EXIT_CONFIG
        }
    }
}
