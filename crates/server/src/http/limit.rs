//! Per-client token-bucket rate limiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Above this many tracked clients, full buckets are forgotten.
const MAX_TRACKED: usize = 100_000;

/// `rate` requests per second per client, bursts of `2 × rate`; `rate == 0` disables it.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; `rate == 0` allows everything.
    pub fn new(rate: u32) -> Self {
        RateLimiter { rate: f64::from(rate), buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one request from `client`'s bucket; false when it is empty. IPv6 clients share one
    /// bucket per /64 (one host usually holds a whole /64); IPv4-mapped addresses count as IPv4.
    pub fn allow(&self, client: IpAddr) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let client = bucket_of(client);
        let burst = 2.0 * self.rate;
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else { return true };
        if buckets.len() > MAX_TRACKED {
            let rate = self.rate;
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(client).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The key a client is counted under: its address, IPv6 by /64 (one host usually holds a whole
/// /64), IPv4-mapped addresses as IPv4.
pub(crate) fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_per_client() {
        let l = RateLimiter::new(5);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let allowed = (0..20).filter(|_| l.allow(a)).count();
        assert_eq!(allowed, 10, "burst is twice the rate");
        assert!(l.allow(b), "other clients are not affected");
        assert!(RateLimiter::new(0).allow(a));
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let l = RateLimiter::new(5);
        // Rotating through the host part of one /64 does not buy more requests.
        let allowed =
            (0..20u16).filter(|i| l.allow(format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap())).count();
        assert_eq!(allowed, 10);
        assert!(l.allow("2001:db8:1:3::1".parse().unwrap()), "another /64 has its own bucket");
        // IPv4-mapped counts as the IPv4 address.
        let m = RateLimiter::new(5);
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!((0..10).filter(|_| m.allow(v4)).count(), 10);
        assert!(!m.allow("::ffff:192.0.2.7".parse().unwrap()));
    }
}
