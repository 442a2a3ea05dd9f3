//! Prices and the exact cost of a call.
//!
//! What this module promises:
//! - A price table, either the one shipped in the repository's `pricing.json` ([`PriceTable::builtin`])
//!   or a user's own file of the same shape ([`PriceTable::load`]), with a `version` that every cost
//!   names, so a recorded cost says which prices it used.
//! - Model resolution that never guesses a family: a model name is looked up exactly, then as an
//!   alias, then with a recognized date or version suffix removed (`gpt-4o-2024-08-06`,
//!   `claude-sonnet-4-5-20250929`, `gemini-2.0-flash-001`, `-latest`, ...), and again after each
//!   removal. There is no prefix matching, so `gpt-4o-mini` can never be priced as `gpt-4o`; a name
//!   that does not resolve has no cost (`None`), never a made-up one.
//! - Exact arithmetic. Prices are parsed from decimal strings into integers (never through `f64`),
//!   multiplied by integer token counts and summed as integers; [`Usd`] prints the exact decimal.
//!   `f64` appears only in [`Usd::to_f64`] and in the `total_usd` number of a serialized [`Cost`].
//!
//! # `pricing.json`
//!
//! ```json
//! {
//!   "version": "2026-12-01",                 // named by every Cost priced with this table
//!   "currency": "USD", "unit": "per 1M tokens",   // the only currency and unit accepted
//!   "note": "...",                           // optional, free text
//!   "providers": {                           // "openai", "anthropic", "google"; each optional
//!     "anthropic": {
//!       "source": "...", "read_on": "...",   // optional: where and when the prices were read
//!       "models": {
//!         "claude-sonnet-4-5": {             // the canonical name, lowercase
//!           "input": "3",                    // required: uncached prompt tokens
//!           "cached_input": "0.30",          // optional: cache reads (default: input)
//!           "cache_write_5m": "3.75",        // optional: cache writes (default: input)
//!           "cache_write_1h": "6",           // optional: 1-hour cache writes (default: cache_write_5m)
//!           "output": "15",                  // required: output tokens, reasoning included
//!           "long_context": {                // optional: a second tier for long prompts
//!             "above_input_tokens": 200000,  // the tier applies when input tokens exceed this
//!             "input": "6", "cache_write_5m": "7.50", "cache_write_1h": "12",
//!             "cached_input": "0.60", "output": "22.50"
//!           },
//!           "aliases": ["..."],              // optional: other names for the same prices
//!           "note": "..."                    // optional, free text
//!         }
//!       }
//!     }
//!   }
//! }
//! ```
//!
//! Prices are JSON strings holding a plain decimal (`"0.075"`): digits, an optional `.` and at most
//! [`PRICE_DECIMALS`] decimal places; no sign, exponent or spaces. Unknown fields are errors, so a
//! misspelt field cannot silently drop a price. `cache_write_5m` is the provider's ordinary cache
//! write (Anthropic's 5-minute write; OpenAI's default-retention write); `cache_write_1h` is
//! Anthropic's 1-hour write.
//!
//! # How a call is charged
//!
//! The counts are [`Usage`]'s: `input_tokens` includes cache reads and cache writes,
//! `cache_write_1h_tokens` is part of `cache_write_tokens`, and `output_tokens` includes reasoning.
//! A count the provider did not send counts as 0. The prompt is split into:
//! - `cache_read` = cache read tokens, at `cached_input`;
//! - `cache_write_1h` = 1-hour write tokens, at `cache_write_1h`;
//! - `cache_write_5m` = the other cache writes, at `cache_write_5m`;
//! - `input` = what is left of the prompt (never below 0), at `input`;
//!
//! and `output` = output tokens at `output`. When the prompt (`input_tokens`) exceeds a model's
//! `long_context.above_input_tokens`, every token kind of that call is charged at the tier's rates,
//! as Anthropic, OpenAI and Google bill it. Not priced: Batch/Flex discounts, Fast/priority modes,
//! regional-processing uplifts, Gemini cache storage and audio-specific input rates.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::provider::Provider;
use crate::usage::Usage;

/// Decimal places a price (USD per million tokens) may have. Every listed price has at most 4
/// (`0.0075`); 9 leaves room for a user's own table while a price still fits in a `u64` up to
/// $18 billion per million tokens.
pub const PRICE_DECIMALS: u32 = 9;

/// Decimal places of a [`Usd`]. A price unit is 1e-9 USD per 1e6 tokens, so one token at one
/// price unit costs 1e-15 USD: 15 places hold every product of a price and a token count exactly.
pub const USD_DECIMALS: u32 = PRICE_DECIMALS + 6;

const USD_SCALE: u128 = 10u128.pow(USD_DECIMALS);

/// The shipped table: the repository's `pricing.json`, compiled in.
const BUILTIN_JSON: &str = include_str!("../pricing.json");

/// The only currency and unit a table may state: the arithmetic below assumes them.
const CURRENCY: &str = "USD";
const UNIT: &str = "per 1M tokens";

// ---------------------------------------------------------------------------------------------
// Exact amounts
// ---------------------------------------------------------------------------------------------

/// A price in USD per million tokens, held as an integer number of 1e-9 USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(u64);

impl Price {
    /// The price in units of 1e-9 USD per million tokens (`"0.075"` is 75_000_000).
    pub fn nano_usd_per_million(self) -> u64 {
        self.0
    }

    /// The cost of `tokens` tokens at this price, exactly.
    pub fn cost_of(self, tokens: u64) -> Usd {
        // A u64 times a u64 always fits in a u128.
        Usd(u128::from(self.0) * u128::from(tokens))
    }
}

impl FromStr for Price {
    type Err = String;

    fn from_str(s: &str) -> Result<Price, String> {
        let units = parse_decimal(s, PRICE_DECIMALS).map_err(|why| format!("{s:?} is not a decimal price: {why}"))?;
        u64::try_from(units).map(Price).map_err(|_| format!("{s:?} is not a decimal price: too large"))
    }
}

impl fmt::Display for Price {
    /// The price as a decimal USD amount per million tokens, without trailing zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, u128::from(self.0), PRICE_DECIMALS)
    }
}

/// An exact amount of US dollars, held as an integer number of 1e-15 USD.
///
/// `Display` and `Serialize` give the exact decimal (`"0.0001275"`, no float noise); [`to_f64`]
/// is for display and JSON numbers only.
///
/// [`to_f64`]: Usd::to_f64
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(u128);

impl Usd {
    pub const ZERO: Usd = Usd(0);

    /// The amount in units of 1e-15 USD.
    pub fn femto_usd(self) -> u128 {
        self.0
    }

    /// The nearest `f64` to the exact amount.
    pub fn to_f64(self) -> f64 {
        // Up to 2^53 units (about 9 USD, the cost of nearly every call) both operands convert
        // to f64 exactly, 10^15 being under 2^53, so their division rounds once, correctly: the
        // same value as parsing the exact decimal. Past that the amount itself would round
        // first, so the decimal is parsed.
        const EXACT: u128 = 1 << f64::MANTISSA_DIGITS;
        if self.0 <= EXACT {
            return self.0 as f64 / USD_SCALE as f64;
        }
        self.to_string().parse().unwrap_or(self.0 as f64 / USD_SCALE as f64)
    }

    /// The sum, saturating at the largest amount rather than wrapping (unreachable in practice:
    /// it is about 3e23 USD).
    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }
}

impl std::ops::Add for Usd {
    type Output = Usd;

    fn add(self, other: Usd) -> Usd {
        self.saturating_add(other)
    }
}

impl std::ops::AddAssign for Usd {
    fn add_assign(&mut self, other: Usd) {
        *self = self.saturating_add(other);
    }
}

impl std::iter::Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, Usd::saturating_add)
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, self.0, USD_DECIMALS)
    }
}

impl FromStr for Usd {
    type Err = String;

    fn from_str(s: &str) -> Result<Usd, String> {
        parse_decimal(s, USD_DECIMALS).map(Usd).map_err(|why| format!("{s:?} is not a USD amount: {why}"))
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The exact decimal, written on the stack: a serializer's own `collect_str` may allocate
        // a String for it (MessagePack's does), six times per record.
        let mut text = DecimalText { buf: [0; DecimalText::CAPACITY], len: 0 };
        fmt::Write::write_fmt(&mut text, format_args!("{self}")).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text.as_str())
    }
}

/// A decimal's text, on the stack: a u128 has at most 39 digits, 40 characters with the point.
struct DecimalText {
    buf: [u8; DecimalText::CAPACITY],
    len: usize,
}

impl DecimalText {
    const CAPACITY: usize = 48;

    fn as_str(&self) -> &str {
        // Only `write_str`, which appends whole `str`s, fills it.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for DecimalText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Usd, D::Error> {
        deserializer.deserialize_str(UsdText)
    }
}

/// Reads a `Usd` from its decimal text, borrowed or not, without copying it.
struct UsdText;

impl Visitor<'_> for UsdText {
    type Value = Usd;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a USD amount as a decimal string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Usd, E> {
        s.parse().map_err(E::custom)
    }
}

/// Parses a plain decimal (`"12"`, `"0.075"`) into an integer count of 10^-`decimals` units.
/// Rejects signs, exponents, spaces, a bare or repeated `.`, and more than `decimals` places.
fn parse_decimal(s: &str, decimals: u32) -> Result<u128, String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.starts_with(['-', '+']) {
        return Err("signs are not accepted (prices are never negative)".into());
    }
    if s.contains(['e', 'E']) {
        return Err("exponent notation is not accepted; write the plain decimal".into());
    }
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if frac.is_some_and(|frac| frac.contains('.')) {
        return Err("it has more than one '.'".into());
    }
    if !all_digits(int) || frac.is_some_and(|frac| !all_digits(frac)) {
        return Err("expected digits with an optional '.' and decimal places, such as \"2.50\"".into());
    }
    let frac = frac.unwrap_or("");
    if frac.len() > decimals as usize {
        return Err(format!("it has {} decimal places; at most {decimals} are kept exactly", frac.len()));
    }
    let mut value: u128 = 0;
    let padding = std::iter::repeat_n(b'0', decimals as usize - frac.len());
    for digit in int.bytes().chain(frac.bytes()).chain(padding) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(digit - b'0')))
            .ok_or_else(|| "it is too large".to_string())?;
    }
    Ok(value)
}

/// Writes `value` 10^-`decimals` units as a decimal without trailing zeros (`0`, `12`, `0.0003`).
/// Digits are made on the stack, 64 bits at a time where the value allows (every cost of one
/// call and most sums do): 128-bit division is slow, and this runs for every record.
fn write_decimal(f: &mut fmt::Formatter<'_>, value: u128, decimals: u32) -> fmt::Result {
    debug_assert!(decimals <= 19, "the fraction must fit in a u64");
    let scale = 10u128.pow(decimals);
    let (int, frac) = (value / scale, (value % scale) as u64);
    // u64::MAX has 20 digits, and so has a u64 fraction.
    let mut buf = [0u8; 20 + 1 + 20];
    let mut at = buf.len();
    if frac != 0 {
        let mut frac = frac;
        let mut width = decimals;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        for _ in 0..width {
            at -= 1;
            buf[at] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        at -= 1;
        buf[at] = b'.';
    }
    let Ok(mut int) = u64::try_from(int) else {
        // An integer part past u64 (over 1.8e19 USD) is never a real price or sum: the slow path.
        write!(f, "{int}")?;
        return f.write_str(std::str::from_utf8(&buf[at..]).expect("ASCII digits"));
    };
    loop {
        at -= 1;
        buf[at] = b'0' + (int % 10) as u8;
        int /= 10;
        if int == 0 {
            break;
        }
    }
    f.write_str(std::str::from_utf8(&buf[at..]).expect("ASCII digits"))
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// The rates of one pricing tier, USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rates {
    pub input: Price,
    pub cached_input: Option<Price>,
    pub cache_write_5m: Option<Price>,
    pub cache_write_1h: Option<Price>,
    pub output: Price,
}

impl Rates {
    /// Cache reads; a model without a cache-read price charges them as input.
    pub fn cache_read_rate(&self) -> Price {
        self.cached_input.unwrap_or(self.input)
    }

    /// Ordinary cache writes; a model without a cache-write price charges them as input.
    pub fn cache_write_5m_rate(&self) -> Price {
        self.cache_write_5m.unwrap_or(self.input)
    }

    /// 1-hour cache writes; without their own price, as ordinary cache writes.
    pub fn cache_write_1h_rate(&self) -> Price {
        self.cache_write_1h.unwrap_or_else(|| self.cache_write_5m_rate())
    }
}

/// A model's second tier: all of a call's tokens at `rates` once its prompt exceeds
/// `above_input_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongContext {
    pub above_input_tokens: u64,
    pub rates: Rates,
}

/// One model's prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrices {
    pub rates: Rates,
    pub long_context: Option<LongContext>,
    pub note: Option<String>,
}

impl ModelPrices {
    /// The tier for a call whose prompt is `prompt_tokens` long, and whether it is the long one.
    pub fn rates_for(&self, prompt_tokens: u64) -> (&Rates, bool) {
        match &self.long_context {
            Some(long) if prompt_tokens > long.above_input_tokens => (&long.rates, true),
            _ => (&self.rates, false),
        }
    }
}

/// A resolved model: the canonical name the table prices it under, and its prices.
#[derive(Debug, Clone, Copy)]
pub struct PriceRef<'a> {
    pub model: &'a str,
    pub prices: &'a ModelPrices,
}

impl PriceRef<'_> {
    /// The cost of a call with `usage`, priced with the table of version `pricing_version`.
    pub fn cost(&self, usage: &Usage, pricing_version: &str) -> Cost {
        let read = usage.cache_read_tokens.unwrap_or(0);
        let write_1h = usage.cache_write_1h_tokens.unwrap_or(0);
        // The 1-hour writes are part of the writes; should a provider send only the 1-hour part,
        // the writes are at least that.
        let writes = usage.cache_write_tokens.unwrap_or(0).max(write_1h);
        // The prompt includes reads and writes; should the provider omit the total, it is at least them.
        let prompt = usage.input_tokens.unwrap_or(0).max(read.saturating_add(writes));
        let uncached = prompt.saturating_sub(read).saturating_sub(writes);
        let output = usage.output_tokens.unwrap_or(0);

        let (rates, long_context) = self.prices.rates_for(prompt);
        let breakdown = Breakdown {
            input: rates.input.cost_of(uncached),
            cache_read: rates.cache_read_rate().cost_of(read),
            cache_write_5m: rates.cache_write_5m_rate().cost_of(writes - write_1h),
            cache_write_1h: rates.cache_write_1h_rate().cost_of(write_1h),
            output: rates.output.cost_of(output),
        };
        Cost {
            model: self.model.to_string(),
            pricing_version: pricing_version.to_string(),
            long_context,
            total: breakdown.total(),
            breakdown,
        }
    }
}

/// One provider's models: the canonical entries, and every canonical name and alias to its entry.
#[derive(Debug, Clone, Default)]
struct ProviderPrices {
    models: Vec<(String, ModelPrices)>,
    by_name: HashMap<String, usize>,
}

/// A price table: per provider, the models it prices.
#[derive(Debug, Clone)]
pub struct PriceTable {
    version: String,
    providers: [ProviderPrices; Provider::ALL.len()],
}

impl PriceTable {
    /// The table shipped with the proxy (the repository's `pricing.json`), parsed once.
    ///
    /// Panics only if the shipped file is invalid, which the unit tests rule out.
    pub fn builtin() -> &'static PriceTable {
        static BUILTIN: OnceLock<PriceTable> = OnceLock::new();
        BUILTIN.get_or_init(|| match PriceTable::from_json(BUILTIN_JSON) {
            Ok(table) => table,
            Err(e) => panic!("the shipped pricing.json is invalid: {e}"),
        })
    }

    /// A user's own price file, of the shape described in the module documentation.
    pub fn load(path: &Path) -> Result<PriceTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PriceTable::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a price table.
    pub fn from_json(json: &str) -> Result<PriceTable, String> {
        let raw: RawTable = serde_json::from_str(json).map_err(|e| format!("invalid price table: {e}"))?;
        raw.into_table()
    }

    /// The table's version, named by every [`Cost`] it prices.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Resolves `model` to the canonical name and prices it is billed under, or `None` when the
    /// table does not know it. See the module documentation for the resolution rules.
    pub fn lookup(&self, provider: Provider, model: &str) -> Option<PriceRef<'_>> {
        let prices = &self.providers[provider.index()];
        let lowered = if model.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(model.to_ascii_lowercase())
        } else {
            Cow::Borrowed(model)
        };
        let mut name = lowered.trim();
        if provider == Provider::Google {
            // Gemini's REST paths and SDKs name models as resources: `models/gemini-2.5-flash`.
            name = name.strip_prefix("models/").unwrap_or(name);
        }
        loop {
            if let Some(&i) = prices.by_name.get(name) {
                let (model, prices) = &prices.models[i];
                return Some(PriceRef { model, prices });
            }
            name = strip_version_suffix(provider, name)?;
        }
    }

    /// The cost of one call, or `None` when the model is unknown.
    pub fn cost(&self, provider: Provider, model: &str, usage: &Usage) -> Option<Cost> {
        Some(self.lookup(provider, model)?.cost(usage, &self.version))
    }
}

/// Suffix shapes that name a snapshot or version of a model rather than another model: `9` stands
/// for any digit, every other byte for itself. Each provider's own conventions only, so that, say,
/// OpenAI's `o1-preview` is not read as `o1`.
const OPENAI_SUFFIXES: &[&str] = &["-9999-99-99", "-9999", "-latest"];
const ANTHROPIC_SUFFIXES: &[&str] = &["-99999999", "@99999999", "-latest"];
const GOOGLE_SUFFIXES: &[&str] =
    &["-999", "-preview-99-99", "-preview-99-9999", "-exp-99-99", "-preview", "-exp", "-latest"];

/// `name` without its last recognized version suffix, or `None` when it has none.
fn strip_version_suffix(provider: Provider, name: &str) -> Option<&str> {
    let shapes = match provider {
        Provider::OpenAi => OPENAI_SUFFIXES,
        Provider::Anthropic => ANTHROPIC_SUFFIXES,
        Provider::Google => GOOGLE_SUFFIXES,
    };
    shapes.iter().find_map(|shape| strip_shape(name, shape))
}

/// `name` without a trailing `shape` (see [`OPENAI_SUFFIXES`]), keeping a non-empty stem.
fn strip_shape<'a>(name: &'a str, shape: &str) -> Option<&'a str> {
    let stem = name.len().checked_sub(shape.len()).filter(|&stem| stem > 0)?;
    let tail = &name.as_bytes()[stem..];
    let matches = tail.iter().zip(shape.bytes()).all(|(&c, s)| if s == b'9' { c.is_ascii_digit() } else { c == s });
    // The tail is ASCII when it matches, so `stem` is a char boundary.
    matches.then(|| &name[..stem])
}

// ---------------------------------------------------------------------------------------------
// Costs
// ---------------------------------------------------------------------------------------------

/// The cost of one call, per token kind (see the module documentation for the split).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    pub input: Usd,
    pub cache_read: Usd,
    pub cache_write_5m: Usd,
    pub cache_write_1h: Usd,
    pub output: Usd,
}

impl Breakdown {
    pub fn total(&self) -> Usd {
        [self.input, self.cache_read, self.cache_write_5m, self.cache_write_1h, self.output].into_iter().sum()
    }
}

/// The priced cost of one call.
///
/// Serialized as `{"model", "pricing_version", "long_context", "total_usd" (a JSON number),
/// "total_exact" (the exact decimal string), "breakdown": {kind: exact decimal string}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "CostRecord", from = "CostRecord")]
pub struct Cost {
    /// The canonical model name the call was priced as.
    pub model: String,
    /// The [`PriceTable::version`] of the prices used.
    pub pricing_version: String,
    /// Whether the model's long-context tier applied.
    pub long_context: bool,
    pub total: Usd,
    pub breakdown: Breakdown,
}

/// [`Cost`] as written in a record.
#[derive(Serialize, Deserialize)]
struct CostRecord {
    model: String,
    pricing_version: String,
    long_context: bool,
    total_usd: f64,
    total_exact: Usd,
    breakdown: Breakdown,
}

impl From<Cost> for CostRecord {
    fn from(cost: Cost) -> CostRecord {
        CostRecord {
            model: cost.model,
            pricing_version: cost.pricing_version,
            long_context: cost.long_context,
            total_usd: cost.total.to_f64(),
            total_exact: cost.total,
            breakdown: cost.breakdown,
        }
    }
}

impl From<CostRecord> for Cost {
    /// The exact total is authoritative; `total_usd` is its rounding.
    fn from(record: CostRecord) -> Cost {
        Cost {
            model: record.model,
            pricing_version: record.pricing_version,
            long_context: record.long_context,
            total: record.total_exact,
            breakdown: record.breakdown,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file format, checked into a PriceTable
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    version: String,
    currency: String,
    unit: String,
    #[serde(default)]
    #[allow(dead_code)] // free text for readers of the file
    note: Option<String>,
    providers: RawProviders,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProviders {
    #[serde(default)]
    openai: Option<RawProvider>,
    #[serde(default)]
    anthropic: Option<RawProvider>,
    #[serde(default)]
    google: Option<RawProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // source and read_on document the file; nothing reads them
struct RawProvider {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    read_on: Option<String>,
    models: BTreeMap<String, RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    input: RawPrice,
    #[serde(default)]
    cached_input: Option<RawPrice>,
    #[serde(default)]
    cache_write_5m: Option<RawPrice>,
    #[serde(default)]
    cache_write_1h: Option<RawPrice>,
    output: RawPrice,
    #[serde(default)]
    long_context: Option<RawTier>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    above_input_tokens: u64,
    input: RawPrice,
    #[serde(default)]
    cached_input: Option<RawPrice>,
    #[serde(default)]
    cache_write_5m: Option<RawPrice>,
    #[serde(default)]
    cache_write_1h: Option<RawPrice>,
    output: RawPrice,
}

/// A price as written: a JSON string. A JSON number is refused with a hint, since reading it
/// would go through a float.
struct RawPrice(String);

impl<'de> Deserialize<'de> for RawPrice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawPrice, D::Error> {
        struct PriceVisitor;

        impl Visitor<'_> for PriceVisitor {
            type Value = RawPrice;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a price as a decimal string, such as \"2.50\"")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawPrice, E> {
                Ok(RawPrice(s.to_string()))
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawPrice, E> {
                Err(E::custom(format!("price {n} is a JSON number; write it as a string: \"{n}\"")))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawPrice, E> {
                Err(E::custom(format!("price {n} is a JSON number; write it as a string: \"{n}\"")))
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<RawPrice, E> {
                Err(E::custom(format!("price {n} is a JSON number; write it as a decimal string: \"{n}\"")))
            }
        }

        deserializer.deserialize_any(PriceVisitor)
    }
}

impl RawTable {
    fn into_table(self) -> Result<PriceTable, String> {
        if self.version.trim().is_empty() {
            return Err("invalid price table: \"version\" is empty".into());
        }
        if self.currency != CURRENCY {
            return Err(format!(
                "invalid price table: currency {:?} is not supported (only {CURRENCY:?})",
                self.currency
            ));
        }
        if self.unit != UNIT {
            return Err(format!("invalid price table: unit {:?} is not supported (only {UNIT:?})", self.unit));
        }
        let mut providers: [ProviderPrices; Provider::ALL.len()] = Default::default();
        let RawProviders { openai, anthropic, google } = self.providers;
        for (provider, raw) in
            [(Provider::OpenAi, openai), (Provider::Anthropic, anthropic), (Provider::Google, google)]
        {
            if let Some(raw) = raw {
                providers[provider.index()] = raw.into_prices(provider)?;
            }
        }
        Ok(PriceTable { version: self.version, providers })
    }
}

impl RawProvider {
    fn into_prices(self, provider: Provider) -> Result<ProviderPrices, String> {
        let mut out = ProviderPrices::default();
        for (name, raw) in self.models {
            let at = format!("providers.{}.models.{name:?}", provider.name());
            check_name(&name).map_err(|why| format!("{at}: model name {why}"))?;
            let aliases = raw.aliases.clone();
            let prices = raw.into_prices().map_err(|why| format!("{at}.{why}"))?;
            let index = out.models.len();
            for key in std::iter::once(&name).chain(&aliases) {
                check_name(key).map_err(|why| format!("{at}.aliases: {key:?} {why}"))?;
                if let Some(&other) = out.by_name.get(key.as_str()) {
                    // An index not yet pushed is this very model (a name repeated in its aliases).
                    let other = out.models.get(other).map_or(name.as_str(), |(n, _)| n.as_str());
                    return Err(format!("{at}: name {key:?} is already used by {other:?}"));
                }
                out.by_name.insert(key.clone(), index);
            }
            out.models.push((name, prices));
        }
        Ok(out)
    }
}

/// Model names are looked up lowercased and trimmed, so a table's names must be too.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.trim() != name || name.contains(char::is_whitespace) {
        Err("contains spaces")
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Err("must be lowercase (names are compared lowercased)")
    } else {
        Ok(())
    }
}

impl RawModel {
    fn into_prices(self) -> Result<ModelPrices, String> {
        let rates = rates(self.input, self.cached_input, self.cache_write_5m, self.cache_write_1h, self.output)?;
        let long_context = match self.long_context {
            None => None,
            Some(tier) => Some(LongContext {
                above_input_tokens: tier.above_input_tokens,
                rates: rates_in_tier(tier).map_err(|why| format!("long_context.{why}"))?,
            }),
        };
        Ok(ModelPrices { rates, long_context, note: self.note })
    }
}

fn rates_in_tier(tier: RawTier) -> Result<Rates, String> {
    rates(tier.input, tier.cached_input, tier.cache_write_5m, tier.cache_write_1h, tier.output)
}

fn rates(
    input: RawPrice,
    cached_input: Option<RawPrice>,
    cache_write_5m: Option<RawPrice>,
    cache_write_1h: Option<RawPrice>,
    output: RawPrice,
) -> Result<Rates, String> {
    let price = |field: &str, raw: RawPrice| raw.0.parse::<Price>().map_err(|why| format!("{field}: {why}"));
    let optional = |field: &str, raw: Option<RawPrice>| raw.map(|raw| price(field, raw)).transpose();
    Ok(Rates {
        input: price("input", input)?,
        cached_input: optional("cached_input", cached_input)?,
        cache_write_5m: optional("cache_write_5m", cache_write_5m)?,
        cache_write_1h: optional("cache_write_1h", cache_write_1h)?,
        output: price("output", output)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        s.parse().unwrap()
    }

    fn usage(input: u64, output: u64) -> Usage {
        Usage { input_tokens: Some(input), output_tokens: Some(output), ..Usage::default() }
    }

    fn cost(provider: Provider, model: &str, usage: &Usage) -> Cost {
        PriceTable::builtin().cost(provider, model, usage).unwrap_or_else(|| panic!("{model} is not priced"))
    }

    fn resolves(provider: Provider, model: &str) -> Option<&'static str> {
        PriceTable::builtin().lookup(provider, model).map(|p| p.model)
    }

    /// A minimal valid table around one model's JSON.
    fn table_with_model(model_json: &str) -> Result<PriceTable, String> {
        PriceTable::from_json(&format!(
            r#"{{"version": "t", "currency": "USD", "unit": "per 1M tokens",
                "providers": {{"openai": {{"models": {{"m": {model_json}}}}}}}}}"#
        ))
    }

    #[test]
    fn decimals_print_exactly_without_trailing_zeros() {
        // The plain long-division form, with 128-bit arithmetic and an allocation.
        fn reference(value: u128, decimals: u32) -> String {
            let scale = 10u128.pow(decimals);
            let (int, frac) = (value / scale, value % scale);
            if frac == 0 {
                return int.to_string();
            }
            let digits = format!("{frac:0width$}", width = decimals as usize);
            format!("{int}.{}", digits.trim_end_matches('0'))
        }
        let mut values =
            vec![0, 1, 9, 10, 11, 100, 1_000_000_000_000_000, u64::MAX as u128, u64::MAX as u128 + 1, u128::MAX];
        let mut x: u128 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            values.push(x >> (x % 128));
        }
        for v in values {
            assert_eq!(Usd(v).to_string(), reference(v, USD_DECIMALS), "{v}");
            if let Ok(small) = u64::try_from(v) {
                assert_eq!(Price(small).to_string(), reference(u128::from(small), PRICE_DECIMALS), "{v}");
            }
        }
        assert_eq!(Usd(1).to_string(), "0.000000000000001");
        assert_eq!(Usd(25 * 10u128.pow(USD_DECIMALS - 3)).to_string(), "0.025");
    }

    #[test]
    fn usd_to_f64_is_the_nearest_double_to_the_exact_decimal() {
        // The nearest double to the exact decimal is what parsing the decimal gives; the
        // division's shortcut must agree on both sides of its bound and for random amounts.
        let exact = 1u128 << f64::MANTISSA_DIGITS;
        let mut values =
            vec![0, 1, 3, 7, 10u128.pow(USD_DECIMALS), exact - 1, exact, exact + 1, exact * 3 + 1, u128::MAX];
        let mut x: u128 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            values.push((x >> 64) % (exact * 4));
        }
        for v in values {
            let parsed: f64 = Usd(v).to_string().parse().unwrap();
            assert_eq!(Usd(v).to_f64().to_bits(), parsed.to_bits(), "{v}");
        }
    }

    #[test]
    fn usd_amounts_round_trip_as_exact_decimal_strings() {
        for v in [0, 1, 25 * 10u128.pow(USD_DECIMALS - 3), u64::MAX as u128 + 7, u128::MAX] {
            let usd = Usd(v);
            let json = serde_json::to_string(&usd).unwrap();
            assert_eq!(json, format!("\"{usd}\""));
            assert_eq!(serde_json::from_str::<Usd>(&json).unwrap(), usd);
            let packed = rmp_serde::to_vec(&usd).unwrap();
            assert_eq!(rmp_serde::from_slice::<Usd>(&packed).unwrap(), usd);
        }
        assert!(serde_json::from_str::<Usd>("\"-1\"").is_err());
        assert!(serde_json::from_str::<Usd>("1").is_err(), "a number, not the exact string");
    }

    #[test]
    fn the_shipped_table_parses_and_prices_every_provider() {
        let table = PriceTable::builtin();
        assert_eq!(table.version(), "2026-12-01");
        for provider in Provider::ALL {
            assert!(table.providers[provider.index()].models.len() >= 10, "{} has too few models", provider.name());
        }
        // Every tier is dearer than the base it replaces, and every price is positive.
        for provider in Provider::ALL {
            for (name, prices) in &table.providers[provider.index()].models {
                assert!(prices.rates.input.0 > 0 && prices.rates.output.0 > 0, "{name}");
                if let Some(long) = &prices.long_context {
                    assert!(long.rates.input > prices.rates.input, "{name}");
                    assert!(long.rates.output >= prices.rates.output, "{name}");
                }
            }
        }
    }

    #[test]
    fn openai_gpt_4o_with_cached_tokens() {
        let u = Usage { cache_read_tokens: Some(4_000), ..usage(10_000, 500) };
        let c = cost(Provider::OpenAi, "gpt-4o", &u);
        assert_eq!(c.model, "gpt-4o");
        assert_eq!(c.pricing_version, "2026-12-01");
        // 6,000 x $2.50/M + 4,000 x $1.25/M + 500 x $10/M
        assert_eq!(c.breakdown.input, usd("0.015"));
        assert_eq!(c.breakdown.cache_read, usd("0.005"));
        assert_eq!(c.breakdown.output, usd("0.005"));
        assert_eq!(c.total, usd("0.025"));
        assert!(!c.long_context);
    }

    #[test]
    fn openai_gpt_5_reasoning_is_part_of_output() {
        let u = Usage { reasoning_tokens: Some(2_500), ..usage(2_000, 3_000) };
        let c = cost(Provider::OpenAi, "gpt-5", &u);
        // 2,000 x $1.25/M + 3,000 x $10/M; the 2,500 reasoning tokens are inside the 3,000.
        assert_eq!(c.breakdown.input, usd("0.0025"));
        assert_eq!(c.breakdown.output, usd("0.03"));
        assert_eq!(c.total, usd("0.0325"));
    }

    #[test]
    fn anthropic_sonnet_4_5_with_5m_and_1h_writes_and_reads() {
        let u = Usage {
            cache_read_tokens: Some(40_000),
            cache_write_tokens: Some(9_000),
            cache_write_1h_tokens: Some(4_000),
            ..usage(50_000, 2_000)
        };
        let c = cost(Provider::Anthropic, "claude-sonnet-4-5", &u);
        // uncached 1,000 x $3 + reads 40,000 x $0.30 + 5m 5,000 x $3.75 + 1h 4,000 x $6 + out 2,000 x $15
        assert_eq!(c.breakdown.input, usd("0.003"));
        assert_eq!(c.breakdown.cache_read, usd("0.012"));
        assert_eq!(c.breakdown.cache_write_5m, usd("0.01875"));
        assert_eq!(c.breakdown.cache_write_1h, usd("0.024"));
        assert_eq!(c.breakdown.output, usd("0.03"));
        assert_eq!(c.total, usd("0.08775"));
    }

    #[test]
    fn anthropic_sonnet_long_context_tier_above_200k() {
        let u = Usage { cache_read_tokens: Some(100_000), cache_write_tokens: Some(50_000), ..usage(250_000, 10_000) };
        let c = cost(Provider::Anthropic, "claude-sonnet-4-5-20250929", &u);
        assert!(c.long_context);
        // uncached 100,000 x $6 + reads 100,000 x $0.60 + 5m 50,000 x $7.50 + out 10,000 x $22.50
        assert_eq!(c.breakdown.input, usd("0.6"));
        assert_eq!(c.breakdown.cache_read, usd("0.06"));
        assert_eq!(c.breakdown.cache_write_5m, usd("0.375"));
        assert_eq!(c.breakdown.output, usd("0.225"));
        assert_eq!(c.total, usd("1.26"));

        // Exactly 200,000 is not above the threshold.
        let at = cost(Provider::Anthropic, "claude-sonnet-4-5", &usage(200_000, 0));
        assert!(!at.long_context);
        assert_eq!(at.total, usd("0.6"));
        let above = cost(Provider::Anthropic, "claude-sonnet-4-5", &usage(200_001, 0));
        assert!(above.long_context);
        assert_eq!(above.total, usd("1.200006"));
    }

    #[test]
    fn google_gemini_2_5_pro_both_tiers() {
        let short = cost(Provider::Google, "gemini-2.5-pro", &usage(100_000, 50_000));
        // 100,000 x $1.25 + 50,000 x $10
        assert_eq!(short.total, usd("0.625"));
        assert!(!short.long_context);

        let u = Usage { cache_read_tokens: Some(50_000), ..usage(300_000, 10_000) };
        let long = cost(Provider::Google, "gemini-2.5-pro", &u);
        assert!(long.long_context);
        // 250,000 x $2.50 + 50,000 x $0.25 + 10,000 x $15
        assert_eq!(long.breakdown.input, usd("0.625"));
        assert_eq!(long.breakdown.cache_read, usd("0.0125"));
        assert_eq!(long.breakdown.output, usd("0.15"));
        assert_eq!(long.total, usd("0.7875"));
    }

    #[test]
    fn google_gemini_2_5_flash_with_cached_tokens_and_thoughts() {
        let u = Usage { cache_read_tokens: Some(8_000), reasoning_tokens: Some(1_000), ..usage(20_000, 1_200) };
        let c = cost(Provider::Google, "models/gemini-2.5-flash", &u);
        // 12,000 x $0.30 + 8,000 x $0.03 + 1,200 (thoughts included) x $2.50
        assert_eq!(c.breakdown.input, usd("0.0036"));
        assert_eq!(c.breakdown.cache_read, usd("0.00024"));
        assert_eq!(c.breakdown.output, usd("0.003"));
        assert_eq!(c.total, usd("0.00684"));
    }

    #[test]
    fn openai_cache_writes_and_the_272k_tier() {
        let u = Usage { cache_read_tokens: Some(100_000), cache_write_tokens: Some(72_000), ..usage(272_000, 1_000) };
        let c = cost(Provider::OpenAi, "gpt-6.1-terra", &u);
        assert!(!c.long_context, "exactly 272K input tokens uses the short-context rates");
        // 100,000 x $1 + 100,000 x $0.05 + 72,000 x $1.25 + 1,000 x $5
        assert_eq!(c.total, usd("0.2"));

        let long = cost(Provider::OpenAi, "gpt-6.1-terra", &usage(272_001, 1_000));
        assert!(long.long_context);
        // 272,001 x $2 + 1,000 x $7.50
        assert_eq!(long.total, usd("0.551502"));
    }

    #[test]
    fn anthropic_haiku_5_5_bands_count_cache_tokens() {
        // 60,000 uncached + 50,000 read = a 110,000-token prompt: the upper band.
        let u = Usage { cache_read_tokens: Some(50_000), ..usage(110_000, 1_000) };
        let c = cost(Provider::Anthropic, "claude-haiku-5-5", &u);
        assert!(c.long_context);
        // 60,000 x $0.50 + 50,000 x $0.05 + 1,000 x $2.50
        assert_eq!(c.total, usd("0.035"));
    }

    #[test]
    fn missing_rates_fall_back_and_missing_counts_are_zero() {
        // gemini-2.0-flash-lite has no cache-read price: cached tokens at the input rate.
        let u = Usage { cache_read_tokens: Some(1_000), ..usage(1_000, 0) };
        let c = cost(Provider::Google, "gemini-2.0-flash-lite", &u);
        assert_eq!(c.breakdown.cache_read, usd("0.000075"));
        assert_eq!(c.breakdown.input, Usd::ZERO);

        // gpt-5 has no cache-write price: writes at the input rate, 1-hour writes too.
        let u = Usage { cache_write_tokens: Some(1_000), cache_write_1h_tokens: Some(400), ..usage(1_000, 0) };
        let c = cost(Provider::OpenAi, "gpt-5", &u);
        assert_eq!(c.breakdown.cache_write_5m, usd("0.00075"));
        assert_eq!(c.breakdown.cache_write_1h, usd("0.0005"));
        assert_eq!(c.total, usd("0.00125"));

        // No counts at all: a zero cost, still priced.
        let c = cost(Provider::Anthropic, "claude-opus-4-5", &Usage::default());
        assert_eq!(c.total, Usd::ZERO);
        assert_eq!(c.total.to_string(), "0");

        // Cache counts larger than the prompt never make the uncached part negative.
        let u = Usage { cache_read_tokens: Some(900), cache_write_tokens: Some(300), ..usage(1_000, 0) };
        let c = cost(Provider::Anthropic, "claude-haiku-4-5", &u);
        assert_eq!(c.breakdown.input, Usd::ZERO);
        // 900 x $0.10 + 300 x $1.25
        assert_eq!(c.total, usd("0.000465"));
    }

    #[test]
    fn snapshots_suffixes_and_aliases_resolve_to_their_family() {
        let cases = [
            (Provider::Anthropic, "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            (Provider::Anthropic, "claude-3-5-haiku-20241022", "claude-3-5-haiku"),
            (Provider::Anthropic, "claude-3-5-haiku-latest", "claude-3-5-haiku"),
            (Provider::Anthropic, "claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
            (Provider::Anthropic, "claude-haiku-4-5-20251001", "claude-haiku-4-5"),
            (Provider::Anthropic, "claude-opus-4-5@20251101", "claude-opus-4-5"),
            (Provider::Anthropic, "claude-sonnet-4-0", "claude-sonnet-4"),
            (Provider::Anthropic, "Claude-Opus-4-6", "claude-opus-4-6"),
            (Provider::OpenAi, "gpt-4o-2024-08-06", "gpt-4o"),
            (Provider::OpenAi, "gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
            (Provider::OpenAi, "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            (Provider::OpenAi, "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
            (Provider::OpenAi, "gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
            (Provider::OpenAi, "o3-2025-04-16", "o3"),
            (Provider::OpenAi, "o1-mini-2024-09-12", "o1-mini"),
            (Provider::OpenAi, "gpt-5-chat-latest", "gpt-5"),
            (Provider::OpenAi, "gpt-5.6", "gpt-5.6-sol"),
            (Provider::OpenAi, "gpt-5-2025-08-07", "gpt-5"),
            (Provider::OpenAi, " GPT-5.4-Mini ", "gpt-5.4-mini"),
            (Provider::Google, "models/gemini-2.5-flash", "gemini-2.5-flash"),
            (Provider::Google, "gemini-2.0-flash-001", "gemini-2.0-flash"),
            (Provider::Google, "gemini-2.0-flash-lite-001", "gemini-2.0-flash-lite"),
            (Provider::Google, "gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
            (Provider::Google, "gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"),
            (Provider::Google, "gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash"),
            (Provider::Google, "models/gemini-2.5-pro-preview-06-05", "gemini-2.5-pro"),
            (Provider::Google, "gemini-3-pro-preview", "gemini-3-pro-preview"),
            (Provider::Google, "gemini-3.1-flash-lite-preview", "gemini-3.1-flash-lite"),
        ];
        for (provider, model, want) in cases {
            assert_eq!(resolves(provider, model), Some(want), "{model}");
        }
    }

    #[test]
    fn a_name_never_resolves_to_another_family() {
        let table = PriceTable::builtin();
        let cases = [
            (Provider::OpenAi, "gpt-4o-mini", "gpt-4o-mini"),
            (Provider::OpenAi, "gpt-4.1-nano", "gpt-4.1-nano"),
            (Provider::OpenAi, "o1-mini", "o1-mini"),
            (Provider::OpenAi, "gpt-5-mini", "gpt-5-mini"),
            (Provider::OpenAi, "gpt-5.4-pro", "gpt-5.4-pro"),
            (Provider::Google, "gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
        ];
        for (provider, model, want) in cases {
            assert_eq!(resolves(provider, model), Some(want), "{model}");
        }
        // Not in the table, and no recognized suffix: unknown, not the shorter family.
        for (provider, model) in [
            (Provider::OpenAi, "gpt-4o-mini-tts"),
            (Provider::OpenAi, "gpt-4o-audio-preview"),
            (Provider::OpenAi, "o1-preview"),
            (Provider::OpenAi, "gpt-5.4-turbo"),
            (Provider::Anthropic, "claude-sonnet-4-5-foo"),
            (Provider::Google, "gemini-2.5-flash-image"),
            (Provider::Google, "gemini-2.5-flash-preview-tts"),
        ] {
            assert_eq!(resolves(provider, model), None, "{model}");
        }
        // A table without o1-mini does not price it as o1.
        let json = r#"{"version": "t", "currency": "USD", "unit": "per 1M tokens", "providers": {"openai": {"models": {
            "o1": {"input": "15", "output": "60"}}}}}"#;
        let small = PriceTable::from_json(json).unwrap();
        assert!(small.lookup(Provider::OpenAi, "o1-mini").is_none());
        assert!(small.lookup(Provider::OpenAi, "o1-mini-2024-09-12").is_none());
        assert_eq!(small.lookup(Provider::OpenAi, "o1-2024-12-17").map(|p| p.model), Some("o1"));
        // Each provider's own names only.
        assert!(table.lookup(Provider::Anthropic, "gpt-4o").is_none());
    }

    #[test]
    fn unknown_models_have_no_cost() {
        let table = PriceTable::builtin();
        assert!(table.cost(Provider::OpenAi, "gpt-99", &usage(10, 10)).is_none());
        assert!(table.cost(Provider::Anthropic, "", &usage(10, 10)).is_none());
        assert!(table.cost(Provider::Google, "models/", &usage(10, 10)).is_none());
        assert!(table.cost(Provider::Google, "-001", &usage(10, 10)).is_none());
    }

    #[test]
    fn prices_are_exact_decimals() {
        assert_eq!("0.075".parse::<Price>().unwrap().nano_usd_per_million(), 75_000_000);
        assert_eq!("2.50".parse::<Price>().unwrap().to_string(), "2.5");
        assert_eq!("0.000000001".parse::<Price>().unwrap().nano_usd_per_million(), 1);
        assert_eq!("18".parse::<Price>().unwrap().nano_usd_per_million(), 18_000_000_000);

        // 3 tokens at $0.10 per million: exactly 3e-7 USD.
        let three = "0.10".parse::<Price>().unwrap().cost_of(3);
        assert_eq!(three.to_string(), "0.0000003");
        assert_eq!(three.to_f64(), 0.0000003);

        // A million one-token costs at $0.075/M sum to exactly $0.075; in f64 they drift.
        let one = "0.075".parse::<Price>().unwrap().cost_of(1);
        assert_eq!(one.to_string(), "0.000000075");
        let exact: Usd = std::iter::repeat_n(one, 1_000_000).sum();
        assert_eq!(exact.to_string(), "0.075");
        let float: f64 = std::iter::repeat_n(0.075 / 1e6, 1_000_000).sum();
        assert_ne!(float, 0.075, "the float sum drifts, which is why costs are integers");

        assert_eq!(usd("0.0001275").to_string(), "0.0001275");
        assert_eq!(usd("12").to_string(), "12");
        assert_eq!(usd("12.000").to_string(), "12");
        assert_eq!((usd("0.1") + usd("0.2")).to_string(), "0.3");
    }

    #[test]
    fn bad_decimals_are_refused_with_the_reason() {
        for (bad, why) in [
            ("1.2.3", "more than one '.'"),
            ("-1", "signs are not accepted"),
            ("+1", "signs are not accepted"),
            ("1e3", "exponent"),
            ("0.0000000001", "10 decimal places"),
            ("", "empty"),
            (" 1", "expected digits"),
            ("1.", "expected digits"),
            (".5", "expected digits"),
            ("abc", "expected digits"),
            ("99999999999999999999999", "too large"),
        ] {
            let err = table_with_model(&format!(r#"{{"input": "{bad}", "output": "1"}}"#)).unwrap_err();
            assert!(err.contains("providers.openai.models.\"m\".input"), "{bad}: {err}");
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err = table_with_model(
            r#"{"input": "1", "output": "1", "long_context": {"above_input_tokens": 5, "input": "x", "output": "1"}}"#,
        )
        .unwrap_err();
        assert!(err.contains("long_context.input"), "{err}");
        let err = table_with_model(r#"{"input": 2.5, "output": "1"}"#).unwrap_err();
        assert!(err.contains("JSON number") && err.contains("\"2.5\""), "{err}");
    }

    #[test]
    fn missing_and_unknown_fields_are_refused() {
        let err = table_with_model(r#"{"output": "1"}"#).unwrap_err();
        assert!(err.contains("missing field `input`"), "{err}");
        let err = table_with_model(r#"{"input": "1"}"#).unwrap_err();
        assert!(err.contains("missing field `output`"), "{err}");
        let err = table_with_model(r#"{"input": "1", "output": "1", "cache_read": "0.1"}"#).unwrap_err();
        assert!(err.contains("unknown field `cache_read`"), "{err}");
        let err = table_with_model(r#"{"input": "1", "output": "1", "long_context": {"input": "2", "output": "2"}}"#)
            .unwrap_err();
        assert!(err.contains("missing field `above_input_tokens`"), "{err}");

        let base = |providers: &str| {
            PriceTable::from_json(&format!(
                r#"{{"version": "t", "currency": "USD", "unit": "per 1M tokens", "providers": {providers}}}"#
            ))
        };
        let err = base(r#"{"mistral": {"models": {}}}"#).unwrap_err();
        assert!(err.contains("unknown field `mistral`"), "{err}");
        let err = base(r#"{"openai": {"models": {"GPT-4o": {"input": "1", "output": "1"}}}}"#).unwrap_err();
        assert!(err.contains("lowercase"), "{err}");
        let err = base(
            r#"{"openai": {"models": {"a": {"input": "1", "output": "1"}, "b": {"input": "1", "output": "1", "aliases": ["a"]}}}}"#,
        )
        .unwrap_err();
        assert!(err.contains("\"a\" is already used by \"a\""), "{err}");
        let ok = base(r#"{}"#).unwrap();
        assert!(ok.lookup(Provider::OpenAi, "gpt-4o").is_none());

        let err =
            PriceTable::from_json(r#"{"version": "t", "currency": "EUR", "unit": "per 1M tokens", "providers": {}}"#)
                .unwrap_err();
        assert!(err.contains("currency \"EUR\""), "{err}");
        let err =
            PriceTable::from_json(r#"{"version": "t", "currency": "USD", "unit": "per 1K tokens", "providers": {}}"#)
                .unwrap_err();
        assert!(err.contains("unit"), "{err}");
        let err =
            PriceTable::from_json(r#"{"currency": "USD", "unit": "per 1M tokens", "providers": {}}"#).unwrap_err();
        assert!(err.contains("missing field `version`"), "{err}");
        assert!(PriceTable::from_json("not json").is_err());
    }

    #[test]
    fn a_users_file_loads_and_names_its_path_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.json");
        std::fs::write(
            &path,
            r#"{"version": "mine-1", "currency": "USD", "unit": "per 1M tokens", "providers": {"anthropic": {"models": {
                "claude-sonnet-4-5": {"input": "1", "output": "2"}}}}}"#,
        )
        .unwrap();
        let table = PriceTable::load(&path).unwrap();
        let c = table.cost(Provider::Anthropic, "claude-sonnet-4-5-20250929", &usage(1_000_000, 1_000_000)).unwrap();
        assert_eq!((c.pricing_version.as_str(), c.total), ("mine-1", usd("3")));

        let missing = dir.path().join("absent.json");
        let err = PriceTable::load(&missing).unwrap_err();
        assert!(err.contains("absent.json"), "{err}");
        std::fs::write(&path, "{").unwrap();
        let err = PriceTable::load(&path).unwrap_err();
        assert!(err.contains("prices.json") && err.contains("invalid price table"), "{err}");
    }

    #[test]
    fn a_cost_serializes_exactly_and_reads_back() {
        let u = Usage { cache_read_tokens: Some(4_000), ..usage(10_000, 500) };
        let c = cost(Provider::OpenAi, "gpt-4o-2024-08-06", &u);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "model": "gpt-4o",
                "pricing_version": "2026-12-01",
                "long_context": false,
                "total_usd": 0.025,
                "total_exact": "0.025",
                "breakdown": {"input": "0.015", "cache_read": "0.005", "cache_write_5m": "0", "cache_write_1h": "0", "output": "0.005"}
            })
        );
        let back: Cost = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }
}
