//! Exact integer helpers for rate conversions.
//!
//! Counts at a rate multiply a nanosecond count (up to 79 bits) by a rate numerator
//! (up to 63 bits), which can exceed `u128`; mediatimestamp uses unbounded Python
//! integers, so the same results need a wide intermediate here.

/// `floor(a * b / c)`, or `None` when the quotient does not fit in `u128`.
///
/// `c` must be non-zero. The common case is one checked multiplication; the 256-bit
/// path only runs for products above 2^128.
pub(crate) fn mul_div_floor(a: u128, b: u128, c: u128) -> Option<u128> {
    debug_assert!(c != 0, "division by zero");
    if let Some(product) = a.checked_mul(b) {
        return Some(product / c);
    }
    let (high, low) = widening_mul(a, b);
    if high >= c {
        return None;
    }
    // Restoring long division of (high, low) by c, one bit of `low` at a time; the
    // running remainder stays below c, so its shifted value fits in 129 bits.
    let mut remainder = high;
    let mut quotient = 0u128;
    for bit in (0..128).rev() {
        let carry = remainder >> 127;
        remainder = (remainder << 1) | ((low >> bit) & 1);
        quotient <<= 1;
        if carry == 1 || remainder >= c {
            remainder = remainder.wrapping_sub(c);
            quotient |= 1;
        }
    }
    Some(quotient)
}

/// The full 256-bit product of two `u128`s as `(high, low)` halves.
fn widening_mul(a: u128, b: u128) -> (u128, u128) {
    const MASK: u128 = u64::MAX as u128;
    let (a1, a0) = (a >> 64, a & MASK);
    let (b1, b0) = (b >> 64, b & MASK);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let middle = (p00 >> 64) + (p01 & MASK) + (p10 & MASK);
    let low = (p00 & MASK) | (middle << 64);
    let high = p11 + (p01 >> 64) + (p10 >> 64) + (middle >> 64);
    (high, low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_products_are_plain_division() {
        assert_eq!(mul_div_floor(10, 3, 4), Some(7));
        assert_eq!(mul_div_floor(0, u128::MAX, 1), Some(0));
    }

    #[test]
    fn wide_products_divide_exactly() {
        // (2^127) * 6 / 3 = 2^128, which does not fit.
        assert_eq!(mul_div_floor(1 << 127, 6, 3), None);
        // (2^127) * 6 / 4 = 3 * 2^126.
        assert_eq!(mul_div_floor(1 << 127, 6, 4), Some(3 << 126));
        // u128::MAX * u128::MAX / u128::MAX = u128::MAX.
        assert_eq!(
            mul_div_floor(u128::MAX, u128::MAX, u128::MAX),
            Some(u128::MAX)
        );
        // (2^100 + 1) * (2^60 + 3) / (2^50 + 7), checked against the decomposition
        // x = 2^160 + 3*2^100 + 2^60 + 3.
        let a = (1u128 << 100) + 1;
        let b = (1u128 << 60) + 3;
        let c = (1u128 << 50) + 7;
        let q = mul_div_floor(a, b, c).unwrap();
        let (high, low) = widening_mul(q, c);
        let (h2, l2) = widening_mul(a, b);
        // q*c <= a*b < (q+1)*c
        assert!(high < h2 || (high == h2 && low <= l2));
        let (h3, l3) = widening_mul(q + 1, c);
        assert!(h3 > h2 || (h3 == h2 && l3 > l2));
    }
}
