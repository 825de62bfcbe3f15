//! Settings picked by name from a fixed list (`--sampler ddim`, `lr_schedule = "wsd"`). The names
//! live beside each enum, so the library needs no command-line crate and the CLI lists them.

/// An enum whose values have names.
pub trait Choice: Copy + PartialEq + 'static {
    /// Every value with its name, as users spell it.
    const CHOICES: &'static [(&'static str, Self)];

    fn name(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .expect("every value is listed in CHOICES")
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::CHOICES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    fn names() -> Vec<&'static str> {
        Self::CHOICES.iter().map(|(n, _)| *n).collect()
    }
}
