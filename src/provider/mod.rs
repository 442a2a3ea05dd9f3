//! The providers the proxy fronts, the endpoints it recognizes, and routing from a proxy path to
//! an upstream path. A closed enum: adding a provider makes the compiler list every `match` to
//! update.

mod route;

pub use route::{route, Route};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Google,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::OpenAi, Provider::Anthropic, Provider::Google];

    /// The name used in routes, flags, env vars and records.
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Google => "google",
        }
    }

    pub fn from_name(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn default_upstream(self) -> &'static str {
        match self {
            Provider::OpenAi => "https://api.openai.com",
            Provider::Anthropic => "https://api.anthropic.com",
            Provider::Google => "https://generativelanguage.googleapis.com",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The endpoint of a call, as recorded (`endpoint` in API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Responses,
    Messages,
    GenerateContent,
    StreamGenerateContent,
    Other,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::GenerateContent => "generateContent",
            Endpoint::StreamGenerateContent => "streamGenerateContent",
            Endpoint::Other => "other",
        }
    }

    /// Whether the endpoint itself says the answer is streamed (Gemini puts it in the path; the
    /// others in the body's `"stream"`).
    pub fn streams_by_path(self) -> bool {
        self == Endpoint::StreamGenerateContent
    }
}
