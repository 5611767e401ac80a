//! Policy texts the tests share, built from parts, so each test says only what is special
//! about its policy.

/// The head of a policy guarding `iface` (a veth the test made): `mode` and `default`,
/// with no failsafe ports (so the tests see the rules alone).
pub fn head(iface: &str, mode: &str, default: &str) -> String {
    format!(
        "mode = \"{mode}\"\ninterfaces = [\"{iface}\"]\ndefault = \"{default}\"\nfailsafe_ports = []\n"
    )
}

/// The head of a policy guarding `iface` with the default failsafe ports (22).
pub fn head_with_failsafe(iface: &str, mode: &str, default: &str) -> String {
    format!("mode = \"{mode}\"\ninterfaces = [\"{iface}\"]\ndefault = \"{default}\"\n")
}

/// An `[[ingress]]` rule named `name` allowing `proto` `ports` from anywhere.
pub fn allow(name: &str, proto: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "[[ingress]]\nname = \"{name}\"\nproto = \"{proto}\"\nports = [{}]\n",
        ports.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_make_a_valid_policy() {
        let text = head("veth0", "enforce", "deny") + &allow("web", "tcp", &[80, 443]);
        let checked = guard::policy::check("t.toml", &text).expect("valid");
        assert_eq!(checked.policy.ingress[0].ports.len(), 2);
        assert!(checked.policy.failsafe_ports.is_empty());
        let text = head_with_failsafe("veth0", "audit", "allow");
        let checked = guard::policy::check("t.toml", &text).expect("valid");
        assert_eq!(checked.policy.failsafe_ports.len(), 1);
    }
}
