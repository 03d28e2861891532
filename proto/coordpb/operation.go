package coordpb

// Title names an operation for lists, logs and the audit: what the operator
// typed ("restart all"), else its action.
func (op *Operation) Title() string {
	if l := op.GetRequest().GetLabel(); l != "" {
		return l
	}
	return op.GetRequest().GetAction()
}
