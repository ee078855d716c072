//! The token bucket every rate limit uses (new mappings per subscriber, fragments per
//! subscriber, ICMP errors per CPU): `rate` tokens a second, a burst of `rate`.

/// Refill the bucket for the time since `refill_ns`, then take one token: false when none
/// is left. Not atomic: two CPUs sharing a bucket may both take the last token.
#[inline(always)]
pub fn take(tokens: &mut u32, refill_ns: &mut u64, rate: u64, now: u64) -> bool {
    let add = now.saturating_sub(*refill_ns) * rate / 1_000_000_000;
    if add > 0 {
        *tokens = (*tokens as u64 + add).min(rate) as u32;
        *refill_ns = now;
    }
    if *tokens == 0 {
        return false;
    }
    *tokens -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::take;

    #[test]
    fn burst_then_refill() {
        let (mut tokens, mut at) = (2u32, 0u64);
        assert!(take(&mut tokens, &mut at, 2, 0));
        assert!(take(&mut tokens, &mut at, 2, 0));
        assert!(!take(&mut tokens, &mut at, 2, 1));
        // Half a second at 2/s: one token, and the refill time moves.
        assert!(take(&mut tokens, &mut at, 2, 500_000_000));
        assert_eq!(at, 500_000_000);
        // Never more than the burst.
        assert!(take(&mut tokens, &mut at, 2, 100_000_000_000));
        assert_eq!(tokens, 1);
    }
}
