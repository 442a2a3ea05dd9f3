//! Personal data: e-mail addresses, phone numbers, payment card numbers (Luhn), US social
//! security numbers and UK national insurance numbers (their issuing rules), IBANs (length per
//! country and the mod-97 checksum).
//!
//! Two fast passes: memchr for `@`, and a word-at-a-time search for digits. Every number-like
//! run is then read against each format in turn; a run that fits none (dates, versions, ids,
//! prices, timestamps) is skipped whole.

use super::{is_word, starts_word, take_back, take_while, Kind, Match};

pub fn find(text: &str, out: &mut Vec<Match>) {
    let b = text.as_bytes();
    emails(b, out);
    let mut at = 0;
    while let Some(d) = next_digit(b, at) {
        if d > 0 && (b[d - 1].is_ascii_digit()) {
            at = d + 1;
            continue;
        }
        // Most numbers in text are short (years, amounts, counts): only a long enough run can be
        // a card (13+ digits) or a phone number (8+).
        let digits = run_digits(b, d);
        let found = iban(b, d)
            .or_else(|| nino(b, d))
            .or_else(|| ssn(b, d))
            .or_else(|| if digits >= 13 { card(b, d) } else { None })
            .or_else(|| if digits >= 8 { phone(b, d) } else { None });
        match found {
            Some(m) => {
                at = m.range.end;
                out.push(m);
            }
            None => at = take_while(b, d, |c| c.is_ascii_digit()),
        }
    }
}

/// Digits in the run from `at`, across single separators (space, dash, dot, parentheses), up
/// to 20.
fn run_digits(b: &[u8], at: usize) -> usize {
    let separator = |c: u8| matches!(c, b' ' | b'-' | b'.' | b'(' | b')');
    let mut count = 0;
    let mut i = at;
    while i < b.len() && count < 20 {
        if b[i].is_ascii_digit() {
            count += 1;
            i += 1;
            continue;
        }
        // At most two separators in a row (`) `, ` (`), then a digit.
        let seps = b[i..].iter().take(3).take_while(|&&c| separator(c)).count();
        if seps == 0 || seps > 2 || !b.get(i + seps).is_some_and(u8::is_ascii_digit) {
            break;
        }
        i += seps;
    }
    count
}

/// The first ASCII digit at or after `from`: sixteen bytes at a time with SSE2 (every x86-64
/// has it), eight at a time elsewhere.
fn next_digit(b: &[u8], from: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    let from = {
        use std::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut i = from;
        // SAFETY: SSE2 is part of the x86-64 baseline; each load reads 16 bytes within `b`.
        unsafe {
            let below = _mm_set1_epi8(b'0' as i8 - 1);
            let above = _mm_set1_epi8(b'9' as i8 + 1);
            while i + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
                // Signed compares: bytes >= 0x80 are negative, so never taken for digits.
                let digits = _mm_and_si128(_mm_cmpgt_epi8(v, below), _mm_cmplt_epi8(v, above));
                let mask = _mm_movemask_epi8(digits);
                if mask != 0 {
                    return Some(i + mask.trailing_zeros() as usize);
                }
                i += 16;
            }
        }
        i
    };
    next_digit_words(b, from)
}

/// `next_digit` eight bytes at a time.
fn next_digit_words(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("eight bytes"));
        // A byte is a digit when (byte ^ '0') < 10; a non-ASCII byte never is.
        let x = w ^ (0x30 * ONES);
        let below_ten = x.wrapping_sub(10 * ONES) & !x & HIGH & !(w & HIGH);
        if below_ten != 0 {
            return Some(i + below_ten.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    (i..b.len()).find(|&j| b[j].is_ascii_digit())
}

fn emails(b: &[u8], out: &mut Vec<Match>) {
    let local_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    for at in memchr::memchr_iter(b'@', b) {
        let start = take_back(b, at, 65, local_char);
        // A local part is at most 64 characters; a longer run is something else (a token).
        if start == at || at - start > 64 || b[start] == b'.' || b[at - 1] == b'.' {
            continue;
        }
        // `scheme://user@host` and `scheme://user:password@host` are a URL's user, not an
        // address; `mailto:` is one.
        let url_user =
            b[..start].ends_with(b"//") || (start > 0 && b[start - 1] == b':' && !b[..start].ends_with(b"mailto:"));
        if url_user {
            continue;
        }
        let (end, labels) = domain(b, at + 1);
        // `git@github.com:org/repo`: an SSH remote.
        let ssh_remote = b.get(end) == Some(&b':') && b.get(end + 1).is_some_and(|c| c.is_ascii_alphanumeric());
        if labels < 2 || ssh_remote {
            continue;
        }
        out.push(Match { kind: Kind::Email, range: start..end });
    }
}

/// End of a domain name at `from` and its label count; the last label must be a 2+ letter TLD.
fn domain(b: &[u8], from: usize) -> (usize, usize) {
    let mut i = from;
    let mut labels = 0;
    let mut last = from..from;
    loop {
        let end = take_while(b, i, |c| c.is_ascii_alphanumeric() || c == b'-');
        if end == i || end - i > 63 {
            break;
        }
        labels += 1;
        last = i..end;
        if b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(|c| c.is_ascii_alphanumeric()) {
            i = end + 1;
        } else {
            break;
        }
    }
    let tld = &b[last.clone()];
    if tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return (from, 0);
    }
    (last.end, labels)
}

/// The byte at `i` does not continue a number or word.
fn ends_number(b: &[u8], i: usize) -> bool {
    match b.get(i) {
        None => true,
        Some(&c) if is_word(c) => false,
        // `1234-5678-` or `12.5`: the number goes on.
        Some(b'-' | b'.' | b'/' | b',') => !b.get(i + 1).is_some_and(u8::is_ascii_digit),
        _ => true,
    }
}

/// Groups of digits from `at`, each separated by one byte of `seps` (the same one throughout).
/// Returns the groups' lengths and the end.
fn groups(b: &[u8], at: usize, seps: &[u8], max_digits: usize) -> (Vec<usize>, usize) {
    let mut lens = Vec::new();
    let mut sep = None;
    let mut i = at;
    let mut digits = 0;
    loop {
        let end = take_while(b, i, |c| c.is_ascii_digit());
        if end == i || digits + (end - i) > max_digits {
            break;
        }
        digits += end - i;
        lens.push(end - i);
        i = end;
        match b.get(i) {
            Some(&s)
                if seps.contains(&s) && sep.is_none_or(|x| x == s) && b.get(i + 1).is_some_and(u8::is_ascii_digit) =>
            {
                sep = Some(s);
                i += 1;
            }
            _ => break,
        }
    }
    (lens, i)
}

fn digits_of(b: &[u8]) -> Vec<u8> {
    b.iter().filter(|c| c.is_ascii_digit()).map(|c| c - b'0').collect()
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A card network's number: its issuer prefix and length, and the Luhn check.
fn card(b: &[u8], at: usize) -> Option<Match> {
    if !starts_word(b, at) || (at > 0 && matches!(b[at - 1], b'-' | b'.' | b'+')) {
        return None;
    }
    let (lens, end) = groups(b, at, b" -", 19);
    let d = digits_of(&b[at..end]);
    if !(13..=19).contains(&d.len()) || !ends_number(b, end) {
        return None;
    }
    // Grouped: groups of 4 (Visa, Mastercard...) or 4-6-5 / 4-6-4 (Amex, Diners).
    let grouped_ok = lens.len() == 1
        || lens[..lens.len() - 1].iter().all(|&l| l == 4) && lens[lens.len() - 1] <= 4
        || lens.len() == 3 && lens[0] == 4 && lens[1] == 6 && (4..=5).contains(&lens[2]);
    let prefix = |n: usize| d[..n].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let issuer = match d.len() {
        15 => matches!(prefix(2), 34 | 37),
        14 => matches!(prefix(2), 30 | 36 | 38),
        13 => d[0] == 4,
        _ => {
            d[0] == 4
                || (51..=55).contains(&prefix(2))
                || (2221..=2720).contains(&prefix(4))
                || prefix(4) == 6011
                || prefix(2) == 65
                || (644..=649).contains(&prefix(3))
                || prefix(2) == 35
                || prefix(2) == 62
                || matches!(prefix(2), 30 | 36 | 38)
        }
    };
    (grouped_ok && issuer && luhn(&d)).then_some(Match { kind: Kind::PaymentCard, range: at..end })
}

/// `AAA-GG-SSSS`, with an area the SSA issues (not 000, 666 or 9xx), a group other than 00 and
/// a serial other than 0000.
fn ssn(b: &[u8], at: usize) -> Option<Match> {
    let s = b.get(at..at + 11)?;
    let shape = s.iter().enumerate().all(|(i, &c)| if i == 3 || i == 6 { c == b'-' } else { c.is_ascii_digit() });
    if !shape
        || !starts_word(b, at)
        || (at > 0 && b[at - 1] == b'-')
        || !ends_number(b, at + 11)
        || b.get(at + 11) == Some(&b'-')
    {
        return None;
    }
    let ok = &s[..3] != b"000" && &s[..3] != b"666" && s[0] != b'9' && &s[4..6] != b"00" && &s[7..] != b"0000";
    ok.then(|| Match { kind: Kind::UsSsn, range: at..at + 11 })
}

/// A UK National Insurance number: two prefix letters (with HMRC's excluded letters and pairs),
/// six digits (optionally spaced in pairs), a suffix A to D.
fn nino(b: &[u8], at: usize) -> Option<Match> {
    let spaced = at >= 3 && b[at - 1] == b' ';
    let start = if spaced { at - 3 } else { at.checked_sub(2)? };
    let (p1, p2) = (b[start], b[start + 1]);
    if !p1.is_ascii_uppercase() || !p2.is_ascii_uppercase() || !starts_word(b, start) {
        return None;
    }
    let bad_first = b"DFIQUV";
    let bad_pairs: [&[u8]; 7] = [b"BG", b"GB", b"NK", b"KN", b"TN", b"NT", b"ZZ"];
    if bad_first.contains(&p1) || bad_first.contains(&p2) || p2 == b'O' || bad_pairs.contains(&&[p1, p2][..]) {
        return None;
    }
    let (lens, mut end) = groups(b, at, b" ", 6);
    if !(lens == [6] || lens == [2, 2, 2]) || (lens == [2, 2, 2]) != spaced {
        return None;
    }
    if spaced && b.get(end) == Some(&b' ') {
        end += 1;
    }
    let suffix = *b.get(end)?;
    if !(b'A'..=b'D').contains(&suffix) || !ends_number(b, end + 1) {
        return None;
    }
    Some(Match { kind: Kind::UkNino, range: start..end + 1 })
}

/// IBAN lengths by country (ISO 13616 registry), sorted by country code.
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// Country code, two check digits, the account: the country's length, mod 97 == 1. Printed
/// compact or in groups of four.
fn iban(b: &[u8], at: usize) -> Option<Match> {
    let start = at.checked_sub(2)?;
    let country = [b[start], b[start + 1]];
    if !country.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let i = IBAN_LENGTHS.binary_search_by(|(c, _)| c.as_slice().cmp(&country[..])).ok()?;
    let len = IBAN_LENGTHS[i].1;
    if !starts_word(b, start) || !b.get(at + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let mut compact = Vec::with_capacity(len);
    let mut i = start;
    while compact.len() < len {
        match b.get(i) {
            Some(&c) if c.is_ascii_uppercase() || c.is_ascii_digit() => compact.push(c),
            // One space between groups of four.
            Some(b' ') if compact.len() % 4 == 0 && b.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric()) => {}
            _ => return None,
        }
        i += 1;
    }
    if b.get(i).is_some_and(|&c| is_word(c)) {
        return None;
    }
    // Move the first four characters to the end; letters count as 10..35.
    let mut rem = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        let v = if c.is_ascii_digit() { u32::from(c - b'0') } else { u32::from(c - b'A') + 10 };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    (rem == 1).then_some(Match { kind: Kind::Iban, range: start..i })
}

/// A phone number as people write one: `+` and a country code with grouped digits, or a North
/// American number in one of its usual forms. An ungrouped run of digits without `+` is not
/// taken for one (ids, timestamps), nor are dates, versions or addresses.
fn phone(b: &[u8], at: usize) -> Option<Match> {
    let mut start = at;
    let paren = start > 0 && b[start - 1] == b'(';
    if paren {
        start -= 1;
    }
    let plus = start > 0 && b[start - 1] == b'+';
    if plus {
        start -= 1;
    }
    if start > 0 && (is_word(b[start - 1]) || matches!(b[start - 1], b'-' | b'.' | b'/' | b'+' | b'$')) {
        return None;
    }
    // Read groups: digits separated by one space, dash or dot, or an area code in parentheses.
    let mut lens = Vec::new();
    let mut seps = Vec::new();
    let mut open = paren;
    let mut i = at;
    loop {
        let end = take_while(b, i, |c| c.is_ascii_digit());
        if end == i || lens.iter().sum::<usize>() + (end - i) > 15 {
            break;
        }
        lens.push(end - i);
        i = end;
        if open && b.get(i) == Some(&b')') {
            open = false;
            seps.push(b')');
            i += 1 + usize::from(b.get(i + 1) == Some(&b' '));
            continue;
        }
        // `+1 (415)`: the area code's parenthesis after a country code.
        if !open && b[i..].starts_with(b" (") && b.get(i + 2).is_some_and(u8::is_ascii_digit) {
            open = true;
            seps.push(b' ');
            i += 2;
            continue;
        }
        match b.get(i) {
            Some(&s @ (b' ' | b'-' | b'.')) if !open && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                seps.push(s);
                i += 1;
            }
            _ => break,
        }
    }
    if open || !ends_number(b, i) {
        return None;
    }
    let total: usize = lens.iter().sum();
    let dots = seps.contains(&b'.');
    let north_american = match lens.as_slice() {
        [3, 3, 4] => !dots || seps.iter().all(|&s| s == b'.'),
        [1, 3, 3, 4] => b[at] == b'1' && !dots,
        _ => false,
    };
    let international = plus && (8..=15).contains(&total) && (lens.len() >= 2 || total >= 10) && !dots;
    (north_american || international).then_some(Match { kind: Kind::PhoneNumber, range: start..i })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Kind, &str)> {
        let mut out = Vec::new();
        find(text, &mut out);
        out.into_iter().map(|m| (m.kind, &text[m.range])).collect()
    }

    #[test]
    fn iban_countries_are_sorted() {
        assert!(IBAN_LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn digits_are_found_in_any_lane() {
        let text = "abcdefghijklmnopqrstuvwxyz".as_bytes();
        assert_eq!(next_digit(text, 0), None);
        for i in 0..40 {
            let mut t = b"abcdefghijklmnopqrstuvwxyz\xc3\xa9\xc3\xa9/:@`abcdefghijkl".to_vec();
            t[i] = b'0' + (i % 10) as u8;
            assert_eq!(next_digit(&t, 0), Some(i), "{i}");
            assert_eq!(next_digit_words(&t, 0), Some(i), "{i}");
            assert_eq!(next_digit(&t, i + 1), None);
        }
        let high: Vec<u8> = (0x80..=0xff).chain(0..0x30).chain(0x3a..0x80).collect();
        assert_eq!(next_digit(&high, 0), None);
        assert_eq!(next_digit_words(&high, 0), None);
    }

    #[test]
    fn formats_and_look_alikes() {
        let cases: &[(&str, Option<(Kind, &str)>)] = &[
            ("write to jane.doe@example.org today", Some((Kind::Email, "jane.doe@example.org"))),
            ("@app.route('/x') and @handle", None),
            ("git@github.com:org/repo.git", None),
            ("call +1 (415) 555-0132 now", Some((Kind::PhoneNumber, "+1 (415) 555-0132"))),
            ("or 415-555-0132.", Some((Kind::PhoneNumber, "415-555-0132"))),
            ("(415) 555-0132", Some((Kind::PhoneNumber, "(415) 555-0132"))),
            ("+44 20 7946 0958", Some((Kind::PhoneNumber, "+44 20 7946 0958"))),
            ("on 2024-01-15 at 10.0.0.12", None),
            ("ts 1733011200000 order 123456789012", None),
            ("card 4111 1111 1111 1111 exp", Some((Kind::PaymentCard, "4111 1111 1111 1111"))),
            ("378282246310005", Some((Kind::PaymentCard, "378282246310005"))),
            ("4111 1111 1111 1112", None),
            ("ssn 123-45-6789", Some((Kind::UsSsn, "123-45-6789"))),
            ("666-12-3456 and 900-12-3456 and 000-12-3456", None),
            ("NI number AB 12 34 56 C.", Some((Kind::UkNino, "AB 12 34 56 C"))),
            ("JG103759A", Some((Kind::UkNino, "JG103759A"))),
            ("QQ123456C", None),
            ("IBAN GB82 WEST 1234 5698 7654 32 ok", Some((Kind::Iban, "GB82 WEST 1234 5698 7654 32"))),
            ("DE89370400440532013000", Some((Kind::Iban, "DE89370400440532013000"))),
            ("GB00WEST12345698765432", None),
            ("version v1.24.3, price $1,234,567.89, SW1A 1AA", None),
        ];
        for (text, want) in cases {
            assert_eq!(found(text).first().copied(), *want, "{text}");
        }
    }
}
