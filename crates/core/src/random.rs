//! Random bytes from the operating system, for keys, nonces and identifiers (below both
//! `crypto` and `id`, which use it).

use crate::error::{Error, Result};

/// Fill a buffer from the operating system's random number generator.
pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| Error::Random)?;
    Ok(out)
}
